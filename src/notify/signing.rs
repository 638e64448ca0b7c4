//! Standard Webhooks signing (<https://www.standardwebhooks.com/>): `webhook-signature` is
//! `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, one per secret,
//! space-separated, so receivers can rotate secrets without a gap.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::decode_secret;

/// How far a `webhook-timestamp` may be from the receiver's clock (the spec's default).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const VERSION: &str = "v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a unix time in seconds")]
    InvalidTimestamp,
    #[error("webhook-timestamp is too old")]
    TooOld,
    #[error("webhook-timestamp is too far in the future")]
    TooNew,
    /// A configured secret does not decode; a configuration problem, not the sender's.
    #[error("signing secret: {0}")]
    BadSecret(String),
    #[error("no signature matches")]
    NoMatch,
}

/// The raw HMAC-SHA256 over `{msg_id}.{timestamp}.{body}`.
fn mac(key: &[u8], msg_id: &str, timestamp: i64, body: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().into()
}

/// One `v1,<base64>` signature with the decoded key bytes.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &str) -> String {
    format!(
        "{VERSION},{}",
        STANDARD.encode(mac(key, msg_id, timestamp, body))
    )
}

/// The `webhook-signature` value: one signature per secret, space-separated. Secrets that do not
/// decode are skipped (configuration validation refuses them before start).
pub fn signature_header(
    secrets: &[SecretString],
    msg_id: &str,
    timestamp: i64,
    body: &str,
) -> String {
    secrets
        .iter()
        .filter_map(|secret| decode_secret(secret).ok())
        .map(|key| sign(&key, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a request's Standard Webhooks headers against any of `secrets`: the timestamp must be
/// within `tolerance` of `now` (replay protection) and one `v1` signature must match.
pub fn verify(
    secrets: &[SecretString],
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &str,
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    let now = now.timestamp();
    if timestamp < now.saturating_sub(tolerance) {
        return Err(VerifyError::TooOld);
    }
    if timestamp > now.saturating_add(tolerance) {
        return Err(VerifyError::TooNew);
    }
    let given: Vec<Vec<u8>> = signature_header
        .split_whitespace()
        .filter_map(|sig| sig.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, b64)| STANDARD.decode(b64).ok())
        .collect();
    for secret in secrets {
        let key = decode_secret(secret).map_err(VerifyError::BadSecret)?;
        let expected = mac(&key, msg_id, timestamp, body);
        // Constant-time, so timing does not reveal how much of a forged signature was right.
        if given.iter().any(|sig| bool::from(sig.ct_eq(&expected))) {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &str = r#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(ts: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(ts, 0).unwrap()
    }

    #[test]
    fn matches_the_published_test_vector() {
        let secrets = vec![SecretString::from(SECRET)];
        assert_eq!(
            signature_header(&secrets, MSG_ID, TIMESTAMP, BODY),
            EXPECTED
        );
        let ok = verify(
            &secrets,
            MSG_ID,
            "1614265330",
            EXPECTED,
            BODY,
            at(TIMESTAMP + 10),
            DEFAULT_TOLERANCE,
        );
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn refuses_stale_future_and_tampered() {
        let secrets = vec![SecretString::from(SECRET)];
        let check = |ts: &str, sig: &str, body: &str, now: i64| {
            verify(&secrets, MSG_ID, ts, sig, body, at(now), DEFAULT_TOLERANCE)
        };
        assert_eq!(
            check("1614265330", EXPECTED, BODY, TIMESTAMP + 301),
            Err(VerifyError::TooOld)
        );
        assert_eq!(
            check("1614265330", EXPECTED, BODY, TIMESTAMP - 301),
            Err(VerifyError::TooNew)
        );
        assert_eq!(
            check("soon", EXPECTED, BODY, TIMESTAMP),
            Err(VerifyError::InvalidTimestamp)
        );
        assert_eq!(
            check("1614265330", EXPECTED, r#"{"test": 2432232315}"#, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        // Another version tag or a truncated signature is not accepted.
        let v2 = EXPECTED.replace("v1,", "v2,");
        assert_eq!(
            check("1614265330", &v2, BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check("1614265330", &EXPECTED[..20], BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check("1614265330", "v1,", BODY, TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
    }
}
