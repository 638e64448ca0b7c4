#!/usr/bin/env python3
"""Writes prometheusrule.yaml (Prometheus Operator) from deploy/prometheus/alerts.yml, so the
compose setup and Kubernetes run the same rules from one source.

    python3 deploy/kubernetes/gen-prometheusrule.py           # regenerate
    python3 deploy/kubernetes/gen-prometheusrule.py --check   # exit 1 when out of date (CI)

Needs PyYAML (Debian: python3-yaml).
"""
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE.parent / "prometheus" / "alerts.yml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/kubernetes/gen-prometheusrule.py:
# edit that file, then run the script. What each alert means: docs/operating.md, "Alerts".
# kube-prometheus-stack only loads PrometheusRules carrying its release label by default:
# add it (e.g. `release: kube-prometheus-stack`) in an overlay.
"""


class Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value):
    # Multi-line PromQL as literal blocks, so the generated file reads like the source.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _str)


def render() -> str:
    rules = yaml.safe_load(SOURCE.read_text())
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "callkeeper", "labels": {"app.kubernetes.io/name": "callkeeper"}},
        "spec": {"groups": rules["groups"]},
    }
    body = yaml.dump(document, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run {pathlib.Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
