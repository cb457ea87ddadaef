//! A progress line on stderr: [`bar`] turns counts into text (pure); [`Line`] redraws it in
//! place on a terminal and, elsewhere (CI logs, pipes), prints it as a new line only when it
//! changes, at most once a second.
//!
//! # Decisions
//! - Our own few lines rather than `indicatif`: the workspace builds on two cores, and this
//!   needs no terminal handling beyond `\r` and "erase line".

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// Cells of the bar.
pub const WIDTH: usize = 30;

/// `label [=========>          ] done/total suffix`; without a known total, `label done suffix`.
pub fn bar(label: &str, done: i64, total: Option<i64>, suffix: &str) -> String {
    let suffix = if suffix.is_empty() {
        String::new()
    } else {
        format!(" {suffix}")
    };
    let Some(total) = total.filter(|t| *t > 0) else {
        return format!("{label} {done}{suffix}");
    };
    let done_clamped = done.clamp(0, total);
    let filled = usize::try_from(done_clamped * WIDTH as i64 / total).unwrap_or(0);
    let mut cells = "=".repeat(filled);
    if filled < WIDTH {
        cells.push('>');
        cells.push_str(&" ".repeat(WIDTH - filled - 1));
    }
    format!("{label} [{cells}] {done}/{total}{suffix}")
}

/// A progress line on stderr.
pub struct Line {
    terminal: bool,
    last: String,
    printed_at: Option<Instant>,
}

impl Line {
    /// A line on this process's stderr.
    pub fn stderr() -> Line {
        Line {
            terminal: std::io::stderr().is_terminal(),
            last: String::new(),
            printed_at: None,
        }
    }

    /// Shows `text` (see the module docs for when it is printed).
    pub fn show(&mut self, text: String) {
        if text == self.last {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
        } else if self
            .printed_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            let _ = writeln!(err, "{text}");
            self.printed_at = Some(Instant::now());
        } else {
            return;
        }
        self.last = text;
    }

    /// Ends the line (on a terminal, moves to the next one).
    pub fn finish(&mut self) {
        if self.terminal && !self.last.is_empty() {
            let _ = writeln!(std::io::stderr());
        }
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion_and_never_overflows() {
        assert_eq!(
            bar("scanning", 0, Some(10), ""),
            format!("scanning [>{}] 0/10", " ".repeat(29))
        );
        assert_eq!(
            bar("scanning", 5, Some(10), "x"),
            format!("scanning [{}>{}] 5/10 x", "=".repeat(15), " ".repeat(14))
        );
        assert_eq!(
            bar("scanning", 12, Some(10), ""),
            format!("scanning [{}] 12/10", "=".repeat(30))
        );
        assert_eq!(
            bar("waiting", 3, None, "(no total yet)"),
            "waiting 3 (no total yet)"
        );
        assert_eq!(bar("waiting", 3, Some(0), ""), "waiting 3");
    }
}
