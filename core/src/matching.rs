//! Event-type patterns: a `Webhook`'s `eventTypes` flow in once through
//! [`Matcher::new`], which checks and precompiles them; each event's type
//! then flows through [`Matcher::matches`] to decide whether the webhook
//! receives it.
//!
//! Pattern semantics:
//! - A pattern without `*` matches exactly that type (case-sensitive).
//! - `*` alone matches every type.
//! - Elsewhere, each `*` matches **one or more** characters of any kind,
//!   dots included. So `transaction.*` matches `transaction.approved` and
//!   `transaction.card.approved`, but neither `transaction` nor
//!   `transaction.`; `*.approved` matches `card.approved`; `a*z` needs at
//!   least one character between `a` and `z`.
//!
//! Crossing dots is deliberate: subscribers write `transaction.*` to mean
//! "everything about transactions", and a deeper type added later should
//! not silently fall outside it. A pattern is the event-type grammar
//! (`[a-zA-Z0-9][a-zA-Z0-9._-]*`, at most 253 bytes) with `*` also allowed
//! anywhere, except `**`, which would only mean "two or more".

use std::collections::HashSet;

use crate::envelope::MAX_TYPE_LEN;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The list of patterns was empty; a webhook must subscribe to something.
    #[error("no event types given")]
    Empty,
    /// The pattern has a character outside `[a-zA-Z0-9._*-]`, starts with
    /// `.`, `_` or `-`, is empty, is too long, or contains `**`.
    #[error(
        "invalid event type pattern {0:?}: use letters, digits, '.', '_', '-' and '*', start with a letter, digit or '*', no '**', at most 253 bytes"
    )]
    Invalid(String),
}

/// A compiled set of patterns; cheap to query, built once per `Webhook`
/// generation.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    all: bool,
    exact: HashSet<String>,
    globs: Vec<Glob>,
}

/// A pattern with wildcards, split at each `*` into literal pieces:
/// `a*b*c` is `a`, `[b]`, `c`; a leading or trailing `*` gives an empty
/// `first` or `last`.
#[derive(Debug, Clone)]
struct Glob {
    first: String,
    middle: Vec<String>,
    last: String,
}

impl Matcher {
    /// Checks and compiles `patterns`.
    ///
    /// # Errors
    /// [`PatternError::Empty`] for an empty list, [`PatternError::Invalid`]
    /// naming the first bad pattern.
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut matcher = Matcher::default();
        let mut any = false;
        for pattern in patterns {
            let pattern = pattern.as_ref();
            any = true;
            if !is_valid_pattern(pattern) {
                return Err(PatternError::Invalid(pattern.to_owned()));
            }
            if pattern == "*" {
                matcher.all = true;
            } else if let Some((first, rest)) = pattern.split_once('*') {
                let mut middle: Vec<String> = rest.split('*').map(str::to_owned).collect();
                let last = middle.pop().unwrap_or_default();
                matcher.globs.push(Glob {
                    first: first.to_owned(),
                    middle,
                    last,
                });
            } else {
                matcher.exact.insert(pattern.to_owned());
            }
        }
        if any {
            Ok(matcher)
        } else {
            Err(PatternError::Empty)
        }
    }

    /// Whether `event_type` matches any of the patterns.
    pub fn matches(&self, event_type: &str) -> bool {
        self.all
            || self.exact.contains(event_type)
            || self.globs.iter().any(|glob| glob.matches(event_type))
    }
}

/// Whether `pattern` is acceptable to [`Matcher::new`].
pub fn is_valid_pattern(pattern: &str) -> bool {
    let mut bytes = pattern.bytes();
    pattern.len() <= MAX_TYPE_LEN
        && !pattern.contains("**")
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'*')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'))
}

impl Glob {
    fn matches(&self, text: &str) -> bool {
        let Some(after_first) = text.strip_prefix(self.first.as_str()) else {
            return false;
        };
        // Each star needs one character; a middle piece is best placed at
        // its leftmost possible position, which leaves the most room for
        // what follows.
        let mut pos = text.len() - after_first.len();
        for piece in &self.middle {
            let from = pos + 1;
            let Some(found) = text.get(from..).and_then(|tail| tail.find(piece.as_str())) else {
                return false;
            };
            pos = from + found + piece.len();
        }
        let Some(last_start) = text.len().checked_sub(self.last.len()) else {
            return false;
        };
        last_start > pos && text.ends_with(self.last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> Matcher {
        Matcher::new(patterns).unwrap()
    }

    #[test]
    fn exact_patterns_match_only_the_same_type() {
        let m = matcher(&["transaction.approved", "transaction.rejected"]);
        assert!(m.matches("transaction.approved"));
        assert!(m.matches("transaction.rejected"));
        assert!(!m.matches("transaction.review"));
        assert!(!m.matches("Transaction.approved"));
        assert!(!m.matches("transaction.approved.v2"));
    }

    #[test]
    fn lone_star_matches_every_type() {
        let m = matcher(&["*"]);
        for t in ["a", "transaction.approved", "x.y.z"] {
            assert!(m.matches(t));
        }
    }

    #[test]
    fn trailing_star_matches_one_or_more_characters_across_dots() {
        let m = matcher(&["transaction.*"]);
        assert!(m.matches("transaction.approved"));
        assert!(m.matches("transaction.card.approved"));
        assert!(!m.matches("transaction."));
        assert!(!m.matches("transaction"));
        assert!(!m.matches("transactions.approved"));
        assert!(!m.matches("other.transaction.approved"));
    }

    #[test]
    fn leading_and_inner_stars_need_a_character_each() {
        let m = matcher(&["*.approved"]);
        assert!(m.matches("card.approved"));
        assert!(m.matches("a.b.approved"));
        assert!(!m.matches(".approved"));
        assert!(!m.matches("approved"));

        let m = matcher(&["a*z"]);
        assert!(m.matches("abz"));
        assert!(!m.matches("az"));

        let m = matcher(&["transaction.*.v*"]);
        assert!(m.matches("transaction.approved.v2"));
        assert!(m.matches("transaction.a.b.v10"));
        assert!(!m.matches("transaction..v2"));
        assert!(!m.matches("transaction.approved.v"));
    }

    #[test]
    fn overlapping_prefix_and_suffix_do_not_share_characters() {
        let m = matcher(&["ab*ba"]);
        assert!(!m.matches("aba"));
        assert!(!m.matches("abba"));
        assert!(m.matches("abxba"));
        let m = matcher(&["*a*a*"]);
        assert!(m.matches("xayaz"));
        assert!(!m.matches("xaa"));
    }

    #[test]
    fn a_mixed_list_matches_if_any_pattern_does() {
        let m = matcher(&["refund.issued", "transaction.*"]);
        assert!(m.matches("refund.issued"));
        assert!(m.matches("transaction.review"));
        assert!(!m.matches("refund.denied"));
    }

    #[test]
    fn malformed_patterns_and_empty_lists_are_refused() {
        assert_eq!(
            Matcher::new(Vec::<String>::new()).unwrap_err(),
            PatternError::Empty
        );
        for bad in ["", ".a", "-*", "a**", "a b", "a/*", "é", &"x".repeat(254)] {
            assert_eq!(
                Matcher::new([bad]).unwrap_err(),
                PatternError::Invalid(bad.to_owned()),
                "{bad:?}"
            );
        }
        assert!(is_valid_pattern("*.approved"));
    }
}
