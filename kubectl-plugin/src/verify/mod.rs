//! `kubectl hookline verify --secret whsec_… < request`: a captured request ([`capture`]) and
//! one or more keys flow through [`check`] — the receiver's side of Standard Webhooks, with
//! `hookline_core::signing` — which says which `v1` signature matched which key and how far the
//! `webhook-timestamp` is from this clock, or why the request does not verify. Pure but for
//! reading stdin in [`run`].
//!
//! Each signature of the header is checked on its own, so during a key rotation (two
//! signatures) the output says which key the receiver's secret is.

pub mod capture;

use std::io::Read as _;
use std::time::Duration;

use clap::Args;
use hookline_core::signing::{self, Secret};
use jiff::Timestamp;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::output::{self, OutputArgs};
use crate::timespec::{self, relative};
use capture::Captured;

/// `verify` flags.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The signing key, `whsec_<base64>` (repeatable: every key the receiver accepts).
    #[arg(
        long,
        required = true,
        env = "HOOKLINE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub secret: Vec<String>,
    /// How far `webhook-timestamp` may be from this machine's clock.
    #[arg(long, default_value = "5m")]
    pub tolerance: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A request that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// `webhook-id`.
    pub webhook_id: String,
    /// `webhook-timestamp`.
    pub timestamp: i64,
    /// Which `v1` signature matched, from 1.
    pub signature: usize,
    /// How many `v1` signatures the header has.
    pub signatures: usize,
    /// The matching signature as sent (`v1,…`).
    pub signature_value: String,
    /// Which `--secret` it matched, from 1.
    pub secret: usize,
    /// This clock minus `webhook-timestamp`, in seconds (positive: the request is that old).
    pub skew_seconds: i64,
}

/// Why a request does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A Standard Webhooks header is missing.
    #[error("the request has no {0} header (is it a Standard Webhooks request, with its headers?)")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not Unix seconds.
    #[error("webhook-timestamp {0:?} is not a number of seconds since 1970")]
    BadTimestamp(String),
    /// No `v1,` entry in `webhook-signature`.
    #[error("webhook-signature holds no v1 signature")]
    NoSignature,
    /// No signature matches any key.
    #[error(
        "no signature matches: none of the {signatures} v1 signature(s) was made with the {secrets} secret(s) given over this webhook-id, webhook-timestamp and body; \
         the secret is wrong (another Webhook's, or rotated away), or the body was changed after signing (verify the raw bytes as received, not re-serialized JSON)"
    )]
    Mismatch {
        /// `v1` signatures in the header.
        signatures: usize,
        /// Keys tried.
        secrets: usize,
    },
    /// A signature matches but the timestamp is outside the tolerance.
    #[error(
        "signature {} of {} matches, but webhook-timestamp is {} this clock, more than the {} tolerance: a stale or replayed request (or a wrong clock); --tolerance accepts more",
        .verified.signature, .verified.signatures, skew_words(.verified.skew_seconds), .tolerance
    )]
    Stale {
        /// What did verify.
        verified: Verified,
        /// The tolerance, as given.
        tolerance: String,
    },
}

fn skew_words(skew: i64) -> String {
    let d = hookline_core::duration::format(Duration::from_secs(skew.unsigned_abs()));
    if skew >= 0 {
        format!("{d} behind")
    } else {
        format!("{d} ahead of")
    }
}

/// Checks `request` against `secrets` at `now`.
///
/// # Errors
/// [`Refusal`] saying why it does not verify.
pub fn check(
    request: &Captured,
    secrets: &[Secret],
    now: Timestamp,
    tolerance: Duration,
) -> Result<Verified, Refusal> {
    let header = |name: &'static str| request.header(name).ok_or(Refusal::MissingHeader(name));
    let id = header("webhook-id")?;
    let ts_text = header("webhook-timestamp")?;
    let signature_header = header("webhook-signature")?;
    let timestamp: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| Refusal::BadTimestamp(ts_text.to_owned()))?;
    let candidates: Vec<&str> = signature_header
        .split_whitespace()
        .filter(|s| s.starts_with("v1,"))
        .collect();
    if candidates.is_empty() {
        return Err(Refusal::NoSignature);
    }
    let matched = candidates.iter().enumerate().find_map(|(i, candidate)| {
        secrets.iter().enumerate().find_map(|(j, secret)| {
            signing::verify(
                std::slice::from_ref(secret),
                id,
                timestamp,
                &request.body,
                candidate,
            )
            .ok()
            .map(|()| (i, j))
        })
    });
    let Some((i, j)) = matched else {
        return Err(Refusal::Mismatch {
            signatures: candidates.len(),
            secrets: secrets.len(),
        });
    };
    let verified = Verified {
        webhook_id: id.to_owned(),
        timestamp,
        signature: i + 1,
        signatures: candidates.len(),
        signature_value: candidates[i].to_owned(),
        secret: j + 1,
        skew_seconds: now.as_second() - timestamp,
    };
    if verified.skew_seconds.unsigned_abs() > tolerance.as_secs() {
        return Err(Refusal::Stale {
            verified,
            tolerance: hookline_core::duration::format(tolerance),
        });
    }
    Ok(verified)
}

/// The verified request, for a person.
pub fn describe(v: &Verified, now: Timestamp, tolerance: Duration) -> String {
    let when = Timestamp::from_second(v.timestamp)
        .map(|t| format!("{} ({})", timespec::second(t), relative(t, now)))
        .unwrap_or_default();
    format!(
        "Verified: signature {} of {} ({}) matches secret {}\n\
         webhook-id:        {}\n\
         webhook-timestamp: {} {when}, {} this clock (tolerance {})\n",
        v.signature,
        v.signatures,
        v.signature_value,
        v.secret,
        v.webhook_id,
        v.timestamp,
        skew_words(v.skew_seconds),
        hookline_core::duration::format(tolerance)
    )
}

/// Runs `verify` on stdin.
///
/// # Errors
/// [`Error::Failed`] when the request does not verify; [`Error::Usage`] for a malformed key,
/// tolerance or capture.
pub async fn run(args: VerifyArgs) -> Result<()> {
    let tolerance = timespec::duration("--tolerance", &args.tolerance).map_err(Error::Usage)?;
    let secrets = args
        .secret
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Secret::parse(s).map_err(|e| Error::Usage(format!("--secret #{}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(Error::io("reading the request from stdin"))?;
    let request = capture::parse(&input).map_err(Error::Usage)?;
    let now = Timestamp::now();
    let verified = check(&request, &secrets, now, tolerance)
        .map_err(|r| Error::Failed(format!("not verified: {r}")))?;
    output::print(args.output.format, &verified, || {
        describe(&verified, now, tolerance)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"type":"transaction.approved","timestamp":"2026-12-01T12:00:00Z","data":{"id":"tx_1"}}"#;

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    fn request(id: &str, ts: i64, signature: &str, body: &[u8]) -> Captured {
        let mut raw = format!(
            "POST /hooks HTTP/1.1\r\ncontent-type: application/json\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        capture::parse(&raw).unwrap()
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn during_a_rotation_either_key_verifies_and_the_output_names_which_signature() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let ts = now().as_second() - 3;
        let header = signing::sign(&[new.clone(), old.clone()], "evt_1", ts, BODY);
        let r = request("evt_1", ts, &header, BODY);
        let with_old = check(&r, std::slice::from_ref(&old), now(), FIVE_MIN).unwrap();
        assert_eq!(
            (with_old.signature, with_old.signatures, with_old.secret),
            (2, 2, 1)
        );
        assert_eq!(with_old.skew_seconds, 3);
        let with_new = check(&r, &[old.clone(), new], now(), FIVE_MIN).unwrap();
        assert_eq!((with_new.signature, with_new.secret), (1, 2));
        let text = describe(&with_old, now(), FIVE_MIN);
        assert!(
            text.starts_with("Verified: signature 2 of 2 (v1,"),
            "{text}"
        );
        assert!(
            text.contains("3s behind this clock (tolerance 5m)"),
            "{text}"
        );
    }

    #[test]
    fn a_wrong_secret_does_not_verify() {
        let ts = now().as_second();
        let header = signing::sign(&[Secret::generate()], "evt_1", ts, BODY);
        let r = request("evt_1", ts, &header, BODY);
        let e = check(&r, &[Secret::generate()], now(), FIVE_MIN).unwrap_err();
        assert_eq!(
            e,
            Refusal::Mismatch {
                signatures: 1,
                secrets: 1
            }
        );
        assert!(e.to_string().contains("the secret is wrong"), "{e}");
    }

    #[test]
    fn a_tampered_body_or_id_does_not_verify() {
        let key = Secret::generate();
        let ts = now().as_second();
        let header = signing::sign(std::slice::from_ref(&key), "evt_1", ts, BODY);
        let tampered = String::from_utf8(BODY.to_vec())
            .unwrap()
            .replace("approved", "rejected");
        let r = request("evt_1", ts, &header, tampered.as_bytes());
        assert!(matches!(
            check(&r, std::slice::from_ref(&key), now(), FIVE_MIN),
            Err(Refusal::Mismatch { .. })
        ));
        let r = request("evt_2", ts, &header, BODY);
        assert!(matches!(
            check(&r, &[key], now(), FIVE_MIN),
            Err(Refusal::Mismatch { .. })
        ));
    }

    #[test]
    fn a_stale_or_future_timestamp_is_refused_even_with_a_matching_signature() {
        let key = Secret::generate();
        let ts = now().as_second() - 600;
        let header = signing::sign(std::slice::from_ref(&key), "evt_1", ts, BODY);
        let r = request("evt_1", ts, &header, BODY);
        let e = check(&r, std::slice::from_ref(&key), now(), FIVE_MIN).unwrap_err();
        assert!(matches!(&e, Refusal::Stale { verified, .. } if verified.skew_seconds == 600));
        assert!(
            e.to_string()
                .contains("is 10m behind this clock, more than the 5m tolerance"),
            "{e}"
        );
        assert!(
            check(
                &r,
                std::slice::from_ref(&key),
                now(),
                Duration::from_secs(900)
            )
            .is_ok()
        );
        let future = now().as_second() + 400;
        let header = signing::sign(std::slice::from_ref(&key), "evt_1", future, BODY);
        let e = check(
            &request("evt_1", future, &header, BODY),
            &[key],
            now(),
            FIVE_MIN,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ahead of this clock"), "{e}");
    }

    #[test]
    fn missing_headers_and_unusable_values_are_named() {
        let key = Secret::generate();
        let no_sig = capture::parse(b"webhook-id: e\nwebhook-timestamp: 1\n\n{}").unwrap();
        assert_eq!(
            check(&no_sig, std::slice::from_ref(&key), now(), FIVE_MIN),
            Err(Refusal::MissingHeader("webhook-signature"))
        );
        let r = request("e", 0, "v2,abc", b"{}");
        assert_eq!(
            check(&r, std::slice::from_ref(&key), now(), FIVE_MIN),
            Err(Refusal::NoSignature)
        );
        let r =
            capture::parse(b"webhook-id: e\nwebhook-timestamp: soon\nwebhook-signature: v1,x\n\n")
                .unwrap();
        assert_eq!(
            check(&r, &[key], now(), FIVE_MIN),
            Err(Refusal::BadTimestamp("soon".into()))
        );
    }
}
