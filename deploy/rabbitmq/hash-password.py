#!/usr/bin/env python3
"""Print a RabbitMQ password hash for definitions.json (hashing_algorithm
rabbit_password_hashing_sha256): base64(salt + sha256(salt + utf8 password)), 4 random salt bytes.

    python3 deploy/rabbitmq/hash-password.py 'new password'

Prefer reading the password from stdin so it stays out of shell history:

    python3 deploy/rabbitmq/hash-password.py < secret.txt
"""
import base64
import hashlib
import os
import sys


def rabbit_sha256(password: str) -> str:
    salt = os.urandom(4)
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        password = sys.argv[1]
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        sys.exit("usage: hash-password.py PASSWORD   (or the password on stdin)")
    print(rabbit_sha256(password))
