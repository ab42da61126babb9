//! A progress bar for training runs: steps done, loss, rate and time left, on one line that
//! redraws in a terminal (one line per report otherwise, so logs stay readable).

use std::io::{IsTerminal, Write};

/// Renders and prints progress reports to stderr.
#[derive(Debug)]
pub struct ProgressBar {
    label: String,
    tty: bool,
}

/// `m:ss` or `h:mm:ss`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// One progress line: `label [#####.....] step/steps loss L | R steps/s | T left | extra`
/// (no loss when it is not a number).
pub fn render(
    label: &str,
    step: usize,
    steps: usize,
    loss: f64,
    elapsed_s: f64,
    extra: &str,
) -> String {
    const WIDTH: usize = 24;
    let frac = if steps == 0 {
        1.0
    } else {
        step as f64 / steps as f64
    };
    let filled = ((frac * WIDTH as f64).round() as usize).min(WIDTH);
    let rate = if elapsed_s > 0.0 {
        step as f64 / elapsed_s
    } else {
        0.0
    };
    let left = if rate > 0.0 {
        (steps - step.min(steps)) as f64 / rate
    } else {
        0.0
    };
    let loss = if loss.is_finite() {
        format!(" loss {loss:.3}")
    } else {
        String::new()
    };
    let mut line = format!(
        "{label} [{}{}] {step}/{steps}{loss} | {rate:.2} steps/s | {} left",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        clock(left)
    );
    if !extra.is_empty() {
        line.push_str(" | ");
        line.push_str(extra);
    }
    line
}

impl ProgressBar {
    /// A bar whose lines start with `label`.
    pub fn new(label: impl Into<String>) -> Self {
        ProgressBar {
            label: label.into(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Shows one report.
    pub fn update(&mut self, step: usize, steps: usize, loss: f64, elapsed_s: f64, extra: &str) {
        let line = render(&self.label, step, steps, loss, elapsed_s, extra);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if step >= steps {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rate_and_time_left() {
        let line = render("heads", 50, 200, 2.5, 10.0, "accepted 2.10");
        assert!(line.starts_with("heads [######"), "{line}");
        assert!(line.contains("50/200 loss 2.500"), "{line}");
        assert!(line.contains("5.00 steps/s"), "{line}");
        assert!(line.contains("0:30 left"), "{line}");
        assert!(line.ends_with("| accepted 2.10"), "{line}");
        assert_eq!(clock(3725.0), "1:02:05");
        let no_loss = render("distill", 3, 10, f64::NAN, 1.0, "");
        assert!(no_loss.contains("3/10 | 3.00 steps/s"), "{no_loss}");
    }
}
