//! Progress on stderr: on a terminal an indicatif bar with the count of each verdict and an
//! ETA; otherwise (batch jobs, logs) one plain line per finished student.

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

    pub fn note(&self, line: &str) {
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
        match &self.bar {
            Some(bar) => {
                if !r.verdict.is_graded() {
                    bar.println(line);
                }
                bar.inc(1);
                let counts: Vec<String> = self.counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
                bar.set_message(counts.join(", "));
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
