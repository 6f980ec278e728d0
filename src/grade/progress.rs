//! Progress on stderr: on a terminal an indicatif bar with the count of each verdict and an
//! ETA; otherwise (batch jobs, logs) one plain line per finished student.
//!
//! Every line goes out through [`Progress::note`], which escapes it ([`crate::escape::line`]):
//! a message quotes what a student controls (file names, nbgrader's exception text), and it
//! must not be able to move the cursor, clear the screen or print a line that looks like ours.

use super::report::StudentResult;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;

pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    counts: BTreeMap<&'static str, usize>,
}

impl Progress {
    pub fn new(total: usize, terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta}  {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Progress { bar, total, done: 0, counts: BTreeMap::new() }
    }

    /// The one way out to the terminal: one line, escaped.
    pub fn note(&self, line: &str) {
        let line = crate::escape::line(line);
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finished(&mut self, r: &StudentResult) {
        self.done += 1;
        *self.counts.entry(r.verdict.as_str()).or_insert(0) += 1;
        let score = match (r.score, r.max_score) {
            (Some(a), Some(b)) => format!(" {a}/{b}"),
            _ => String::new(),
        };
        let why = match (&r.message, r.verdict.is_graded()) {
            (Some(m), false) => format!(": {}", m.lines().next().unwrap_or("")),
            _ => String::new(),
        };
        let line = format!(
            "[{:>w$}/{}] {} {}{score} ({:.1}s){why}",
            self.done,
            self.total,
            r.student,
            r.verdict.as_str(),
            r.wall,
            w = self.total.to_string().len()
        );
        if self.bar.is_none() || !r.verdict.is_graded() {
            self.note(&line);
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            let counts: Vec<String> = self.counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
            bar.set_message(counts.join(", "));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
