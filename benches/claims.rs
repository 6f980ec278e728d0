//! Claims per second: how fast the tasks of a shared batch (`--slurm`, `--external-tasks`) take
//! students from a run's queue, on the filesystem of the directory given (default: a temporary
//! directory; give a path on NFS to measure a cluster's). Each of `tasks` threads is a task of
//! its own (its own claims), as on separate machines: it claims a student (the student's lock,
//! non-blocking), records a result (written, synced, renamed), releases the claim, until every
//! student has a result. Nothing is graded: this is the queue's own cost.
//!
//! `cargo bench --bench claims -- [STUDENTS] [TASKS] [DIR]`

use isolate_grade::cli::{Cli, Command};
use isolate_grade::grade::course::Layout;
use isolate_grade::grade::report::{StudentResult, Verdict};
use isolate_grade::grade::shared::{Claims, RunDir, TaskSpec};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let students: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let tasks: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8);
    let base = args.get(2).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("a directory to measure in");
    let course = dir.path().join("course");
    std::fs::create_dir_all(course.join("submitted")).expect("course");
    let layout = Layout::new(&course, "ps1").expect("layout");
    let queue: VecDeque<String> = (0..students).map(|i| format!("s{i:05}")).collect();
    let cli = <Cli as clap::Parser>::parse_from(["isolate-grade", "grade", "ps1"]);
    let Command::Grade(args) = cli.command else { unreachable!() };
    let run = RunDir::create(&layout.runs(), &TaskSpec { config: None, args }, &queue).expect("run");
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let claimed: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (run, layout, stop) = (&run, &layout, &stop);
                s.spawn(move || {
                    let claims = Claims::new(run, layout, run.queue().expect("queue"));
                    let mut n = 0;
                    while let Some((student, claim)) = claims.next(stop).expect("claim") {
                        run.write_result(&StudentResult::without_grades(&student, Verdict::Graded, String::new()))
                            .expect("result");
                        drop(claim);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("task")).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let total: usize = claimed.iter().sum();
    assert_eq!(total, students, "every student claimed exactly once");
    println!(
        "{students} students, {tasks} tasks, in {}: {secs:.3} s, {:.0} claims/s (claimed per task: {claimed:?})",
        base.display(),
        students as f64 / secs
    );
}
