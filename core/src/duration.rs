//! Durations written the Go way (`30s`, `500ms`, `1h30m`, `1.5h`), as the
//! `Webhook` CRD spells them: text from a spec flows in through [`parse`],
//! a [`std::time::Duration`] flows out, and [`format()`] turns one back into
//! the same compact form for status fields and logs.
//!
//! The grammar is Go's `time.ParseDuration` without signs: one or more
//! `<decimal><unit>` terms, units `ns`, `us` (or `µs`/`μs`), `ms`, `s`, `m`,
//! `h`, and the bare `0`. Terms add up, so `1h90m` is two and a half hours.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty (or only whitespace).
    #[error("empty duration")]
    Empty,
    /// A leading `-`: Hookline durations are never negative.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// A term had no digits, no unit, or an unknown unit.
    #[error("invalid duration {input:?}: {detail}")]
    Invalid {
        /// The string as given.
        input: String,
        /// What was wrong, for a person.
        detail: &'static str,
    },
    /// The value does not fit in 2^64 nanoseconds (about 584 years).
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

const NANOS_PER_UNIT: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

/// Parses a Go-style duration such as `30s`, `1m`, `10h`, `500ms` or `1h30m`.
///
/// Surrounding whitespace is ignored; a leading `+` is accepted, as in Go.
///
/// # Errors
/// [`DurationError`] when the string is empty, negative, malformed, uses an
/// unknown unit, or exceeds 2^64 nanoseconds.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    let invalid = |detail| DurationError::Invalid {
        input: input.to_owned(),
        detail,
    };
    let text = text.strip_prefix('+').unwrap_or(text);
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(input.to_owned()));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }

    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (frac_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid("expected a number"));
        }
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, next) = after_number.split_at(unit_len);
        if unit.is_empty() {
            return Err(invalid("missing unit (ns, us, ms, s, m, h)"));
        }
        let per_unit = NANOS_PER_UNIT
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, nanos)| *nanos)
            .ok_or_else(|| invalid("unknown unit (expected ns, us, ms, s, m or h)"))?;

        let overflow = || DurationError::Overflow(input.to_owned());
        let whole: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| overflow())?
        };
        let mut term = whole.checked_mul(per_unit).ok_or_else(overflow)?;
        // Fractions beyond nanosecond precision are truncated, as Go does.
        let mut scale = per_unit;
        for digit in frac_digits.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            term += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(term).ok_or_else(overflow)?;
        if total > u128::from(u64::MAX) {
            return Err(overflow());
        }
        rest = next;
    }
    // `total` fits in u64 nanoseconds, checked in the loop.
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration compactly in the same grammar, omitting zero terms:
/// `1h30m`, `45s`, `1.5s`, `250ms`, `0s`.
///
/// # Guarantees
/// `parse(&format(d)) == Ok(d)` for every `d` below 2^64 nanoseconds.
pub fn format(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let secs = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if secs == 0 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let (hours, minutes, seconds) = (secs / 3_600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&hours.to_string());
        out.push('h');
    }
    if minutes > 0 {
        out.push_str(&minutes.to_string());
        out.push('m');
    }
    if seconds > 0 || nanos > 0 {
        out.push_str(&seconds.to_string());
        if nanos > 0 {
            let fraction = format!("{nanos:09}");
            out.push('.');
            out.push_str(fraction.trim_end_matches('0'));
        }
        out.push('s');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_terms_parse_in_every_unit() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("10h"), Ok(Duration::from_secs(36_000)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" +15s "), Ok(Duration::from_secs(15)));
    }

    #[test]
    fn compound_and_fractional_terms_add_up() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse("1h90m"), Ok(Duration::from_secs(9_000)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m3.25s"), Ok(Duration::from_millis(123_250)));
        assert_eq!(parse("1.0000000009s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn malformed_durations_are_refused_with_a_reason() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(parse("-5s"), Err(DurationError::Negative(_))));
        for bad in ["10", "s", "5x", "1h30", "1..5s", "1d", "5 s", "."] {
            assert!(
                matches!(parse(bad), Err(DurationError::Invalid { .. })),
                "{bad:?} should be invalid"
            );
        }
        assert!(matches!(
            parse("9999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(parse("6000000h"), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn formatted_durations_are_compact_and_parse_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_secs(5_400), "1h30m"),
            (Duration::from_secs(36_000), "10h"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(3_601), "1h1s"),
            (Duration::from_nanos(1_200), "1200ns"),
        ];
        for (duration, text) in cases {
            assert_eq!(format(duration), text);
            assert_eq!(parse(text), Ok(duration));
        }
    }
}
