//! Times and durations as a person types and reads them: flags such as `--timeout 30s`,
//! `--since 10m` or `--from -2h` come in as text and leave as [`Duration`]s or [`Timestamp`]s;
//! times in the output leave as `2026-12-01T10:00:00Z (3m ago)`. Pure: `now` is an argument.
//!
//! Durations use the `Webhook` CRD's own grammar (`500ms`, `30s`, `1h30m`,
//! [`hookline_core::duration`]); a point in time is RFC 3339, `now`, or `now` minus a duration
//! written `-2h` (or `2h ago`).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Reads a duration flag such as `30s`, `10m` or `1h30m`.
///
/// # Errors
/// A message naming the flag and showing the expected form.
pub fn duration(flag: &str, text: &str) -> Result<Duration, String> {
    hookline_core::duration::parse(text)
        .map_err(|e| format!("{flag}: {e} (expected a duration such as 30s, 10m or 1h30m)"))
}

/// Reads a point in time: RFC 3339 (`2026-12-01T10:00:00Z`), `now`, or a duration before now
/// (`-2h`, `2h ago`).
///
/// # Errors
/// A message naming the flag and the accepted forms.
pub fn instant(flag: &str, text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    let ago = t
        .strip_prefix('-')
        .or_else(|| t.strip_suffix("ago").map(str::trim_end));
    if let Some(d) = ago {
        let d = hookline_core::duration::parse(d).map_err(|e| bad_instant(flag, text, &e))?;
        let d = SignedDuration::try_from(d).map_err(|e| bad_instant(flag, text, &e))?;
        return now.checked_sub(d).map_err(|e| bad_instant(flag, text, &e));
    }
    t.parse::<Timestamp>()
        .map_err(|e| bad_instant(flag, text, &e))
}

fn bad_instant(flag: &str, text: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "{flag}: {text:?} is not a time ({e}); use RFC 3339 (2026-12-01T10:00:00Z), now, or a duration before now such as -2h"
    )
}

/// `then` relative to `now`, coarsely: `12s ago`, `5m ago`, `3h ago`, `2d ago`, or `in 23h`.
pub fn relative(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second() - then.as_second();
    let n = secs.unsigned_abs();
    let amount = match n {
        0..120 => format!("{n}s"),
        120..7_200 => format!("{}m", n / 60),
        7_200..172_800 => format!("{}h", n / 3_600),
        _ => format!("{}d", n / 86_400),
    };
    if secs >= 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// `2026-12-01T10:00:00Z (3m ago)`, to the second.
pub fn stamp(then: Timestamp, now: Timestamp) -> String {
    format!("{} ({})", second(then), relative(then, now))
}

/// RFC 3339 to the second, UTC.
pub fn second(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).map_or_else(|_| t.to_string(), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn an_instant_is_rfc3339_now_or_a_duration_before_now() {
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(instant("--from", "now", now).unwrap(), now);
        assert_eq!(
            instant("--from", "-2h", now).unwrap(),
            at("2026-12-01T10:00:00Z")
        );
        assert_eq!(
            instant("--from", "90m ago", now).unwrap(),
            at("2026-12-01T10:30:00Z")
        );
        assert_eq!(
            instant("--to", "2026-11-30T08:00:00+01:00", now).unwrap(),
            at("2026-11-30T07:00:00Z")
        );
        let e = instant("--from", "yesterday", now).unwrap_err();
        assert!(e.starts_with("--from:") && e.contains("-2h"), "{e}");
        assert!(instant("--from", "-2x", now).is_err());
    }

    #[test]
    fn durations_use_the_crd_grammar_and_name_the_flag_when_refused() {
        assert_eq!(
            duration("--timeout", "30s").unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            duration("--since", "1h30m").unwrap(),
            Duration::from_secs(5_400)
        );
        let e = duration("--timeout", "thirty").unwrap_err();
        assert!(e.starts_with("--timeout:") && e.contains("30s"), "{e}");
    }

    #[test]
    fn relative_times_are_coarse_and_say_past_or_future() {
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(relative(at("2026-12-01T11:59:48Z"), now), "12s ago");
        assert_eq!(relative(at("2026-12-01T11:55:00Z"), now), "5m ago");
        assert_eq!(relative(at("2026-12-01T09:00:00Z"), now), "3h ago");
        assert_eq!(relative(at("2026-11-29T12:00:00Z"), now), "2d ago");
        assert_eq!(relative(at("2026-12-02T11:00:00Z"), now), "in 23h");
        assert_eq!(
            stamp(at("2026-12-01T11:59:48.123Z"), now),
            "2026-12-01T11:59:48Z (12s ago)"
        );
    }
}
