//! The command line of a setuid helper is the caller's: every argv (NUL-separated in the
//! input) must parse or be refused, and every value the sandbox would read (sizes, durations,
//! counts, binds, ids) must be accepted or refused, never panic.
#![no_main]

use clap::{CommandFactory, Parser};
use isolate_grade::cli::{with_default_command, Cli, Command, SandboxArgs};
use isolate_grade::{grade, request, stage, units};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fn values(s: &SandboxArgs) {
    for v in [&s.memory, &s.tmp_size].into_iter().flatten() {
        let _ = units::parse_size(v);
    }
    for v in [&s.cpu_time, &s.wall_time].into_iter().flatten() {
        let _ = units::parse_duration(v);
    }
    if let Some(v) = &s.pids {
        let _ = units::parse_count(v, 1 << 22);
    }
    if let Some(v) = &s.cpu_quota {
        let _ = units::parse_cores(v);
    }
    for b in &s.binds {
        let _ = request::parse_bind(b);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut argv: Vec<OsString> = vec!["isolate-grade".into()];
    argv.extend(data.split(|b| *b == 0).map(|a| OsString::from_vec(a.to_vec())));
    let Ok(cli) = Cli::try_parse_from(with_default_command(&Cli::command(), argv)) else { return };
    match cli.command {
        Command::Run(r) => values(&r.sandbox),
        Command::Kernel(k) => {
            values(&k.sandbox);
            let _ = units::parse_size(&k.output_limit);
            let _ = units::parse_size(&k.scratch_size);
        }
        Command::Grade(g) => {
            let _ = grade::course::check_id("assignment", &g.assignment);
            for s in &g.students {
                let _ = grade::course::check_id("student", s);
            }
            if let Some(j) = &g.jobs {
                let _ = units::parse_count(j, 256);
            }
            let _ = units::parse_duration(&g.student_timeout);
            if let Some(n) = &g.slurm_tasks {
                let _ = units::parse_count(n, 10_000);
            }
        }
        Command::Stage(a) => {
            let _ = stage::validate(&a);
        }
        Command::Install(_) | Command::Check(_) | Command::Task(_) | Command::Feedback(_) => {}
    }
});
