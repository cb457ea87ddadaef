//! `$(VAR)` expansion as Kubernetes applies it to env values, `command` and `args`: a string
//! and a lookup go in, the expanded string comes out. A defined `$(VAR)` becomes its value,
//! an undefined one stays as written, `$$` is an escaped `$`, and any other `$` is literal.
//! This mirrors `third_party/forked/golang/expansion` of Kubernetes.

/// Expands every `$(NAME)` in `input` through `lookup`.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A trailing `$` is literal.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after[1..].find(')') {
                Some(end) => {
                    let name = &after[1..1 + end];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[end + 2..];
                }
                // Incomplete reference: `$(` is literal and scanning goes on after it.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Expands `input` against an ordered list of variables (a later entry wins).
pub fn expand_with(input: &str, vars: &[(String, String)]) -> String {
    expand(input, |name| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        vec![
            ("POD_IP".into(), "127.1.0.1".into()),
            ("A".into(), "x".into()),
        ]
    }

    #[test]
    fn defined_variable_is_replaced_by_its_value() {
        assert_eq!(
            expand_with("--bind=$(POD_IP):8080", &vars()),
            "--bind=127.1.0.1:8080"
        );
    }

    #[test]
    fn undefined_variable_is_left_as_written() {
        assert_eq!(expand_with("$(NOPE)-$(A)", &vars()), "$(NOPE)-x");
    }

    #[test]
    fn double_dollar_escapes_a_reference() {
        assert_eq!(expand_with("$$(A)", &vars()), "$(A)");
        assert_eq!(expand_with("$$$(A)", &vars()), "$x");
    }

    #[test]
    fn lone_and_trailing_dollars_are_literal() {
        assert_eq!(expand_with("a$b $", &vars()), "a$b $");
        assert_eq!(expand_with("$é$(A)", &vars()), "$éx");
    }

    #[test]
    fn unclosed_reference_is_literal() {
        assert_eq!(expand_with("$(A", &vars()), "$(A");
        assert_eq!(expand_with("$($(A)", &vars()), "$($(A)");
    }

    #[test]
    fn later_definition_wins() {
        let mut v = vars();
        v.push(("A".into(), "y".into()));
        assert_eq!(expand_with("$(A)", &v), "y");
    }
}
