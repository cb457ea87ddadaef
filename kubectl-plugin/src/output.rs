//! How a command's result leaves: `-o table` (the default) as text for a person, `-o json` and
//! `-o yaml` as the command's result type serialized, for scripts. The serialized shapes are
//! the plugin's own views (camelCase, like the resources they summarize), documented on each
//! type.

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::error::{Error, Result};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Text for a person.
    #[default]
    Table,
    /// JSON (for `tail`: one object per line).
    Json,
    /// YAML.
    Yaml,
}

/// The `--output` flag.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `value` as `format` (`Table` is the caller's own text, `text`).
///
/// # Errors
/// Never in practice: the views always serialize.
pub fn render<T: Serialize>(
    format: Format,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<String> {
    let failed = |e: &dyn std::fmt::Display| Error::Failed(format!("serializing the output: {e}"));
    match format {
        Format::Table => Ok(text()),
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| failed(&e)),
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| failed(&e)),
    }
}

/// Prints [`render`]'s result on stdout.
///
/// # Errors
/// As [`render`].
pub fn print<T: Serialize>(format: Format, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    print!("{}", render(format, value, text)?);
    Ok(())
}

/// Lines of cells as columns, each as wide as its widest cell plus two spaces (the last one
/// unpadded), as `kubectl get` prints them.
pub fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] + 2 - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["NAME".into(), "READY".into(), "URL".into()],
            vec!["orders".into(), "True".into(), "https://x".into()],
        ];
        assert_eq!(
            columns(&rows),
            "NAME    READY  URL\norders  True   https://x\n"
        );
    }

    #[test]
    fn json_and_yaml_serialize_the_view_and_table_is_the_text() {
        let v = serde_json::json!({"a": 1});
        assert_eq!(
            render(Format::Table, &v, || "text\n".into()).unwrap(),
            "text\n"
        );
        assert_eq!(
            render(Format::Json, &v, String::new).unwrap(),
            "{\n  \"a\": 1\n}\n"
        );
        assert_eq!(render(Format::Yaml, &v, String::new).unwrap(), "a: 1\n");
    }
}
