//! The `isolate-grade` binary. Single-threaded until the sandbox is cloned from it: no thread
//! or async runtime may start before that (the kernel relay's thread starts after, in
//! `supervisor`, and this process never forks again).

use clap::{CommandFactory, FromArgMatches};
use isolate_grade::cli::{Cli, Command};
use isolate_grade::exit::{StartExit, USAGE};
use std::process::ExitCode;

fn main() -> ExitCode {
    // One malloc arena for every thread: a thread's first allocation otherwise maps a fresh
    // 64 MB arena, which its exit unmaps again (a TLB flush on every core), for a thread that
    // allocates a few buffers: ~0.1 ms of a short run. Our threads (the output and stdin pumps,
    // a kernel's relay) allocate little and rarely at the same time.
    // SAFETY: mallopt only sets a glibc tunable; no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // Before anything else: nothing the caller left open reaches the sandbox, and nobody of
    // the caller's uid may ptrace or read the memory of this (possibly setuid) process.
    // And fds 0-2 are open, so that no fd we open later is taken for one of them.
    if let Err(e) = isolate_grade::stdio::ensure_standard_fds()
        .and_then(|_| isolate_grade::sys::raw::cloexec_inherited_fds())
        .and_then(|_| isolate_grade::sys::raw::set_non_dumpable())
    {
        eprintln!("isolate-grade: sanitizing the process: {e}");
        return ExitCode::from(StartExit::Fault.code());
    }
    // SIGINT and friends wait for the supervisor to relay them to the program rather than
    // kill us half-way (run); for check, waiting a moment for them costs nothing.
    let mut relayed = nix::sys::signal::SigSet::empty();
    for &s in isolate_grade::init::RELAYED {
        relayed.add(s);
    }
    if let Err(e) = relayed.thread_block() {
        eprintln!("isolate-grade: blocking signals: {e}");
        return ExitCode::from(StartExit::Fault.code());
    }
    // One clap Command, built once: for the `grade` default and for parsing.
    let cmd = Cli::command();
    let args = isolate_grade::cli::with_default_command(&cmd, std::env::args_os().collect());
    let cli = Cli::from_arg_matches(&cmd.get_matches_from(args)).unwrap_or_else(|e| e.exit());
    init_tracing(&cli.log);
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err((code, e)) => {
            // Our error messages already end with their cause ("path: reason"), so only the
            // outermost is printed: `{:#}` would repeat the cause.
            eprintln!("isolate-grade: {e}");
            ExitCode::from(code)
        }
    }
}

fn real_main(cli: Cli) -> Result<u8, (u8, anyhow::Error)> {
    match cli.command {
        Command::Grade(args) => isolate_grade::grade::execute(cli.config, args).map_err(|e| (e.exit_code(), e.into())),
        Command::Run(args) => isolate_grade::run::execute(cli.config, args).map_err(|e| (e.exit_code(), e.into())),
        Command::Kernel(args) => {
            isolate_grade::kernel::execute(cli.config, args).map_err(|e| (e.exit_code(), e.into()))
        }
        Command::Install(args) => {
            isolate_grade::install::execute(cli.config, args).map_err(|e| (e.exit_code(), e.into()))
        }
        Command::Check(args) => Ok(isolate_grade::check::check(cli.config.as_deref(), &args).code()),
        Command::Stage(args) => isolate_grade::stage::execute(args).map_err(|e| (e.exit_code(), e.into())),
        Command::Feedback(args) => isolate_grade::feedback::execute(args).map_err(|e| (e.exit_code(), e.into())),
        Command::Task(args) => isolate_grade::grade::task(args).map_err(|e| (e.exit_code(), e.into())),
    }
    // An error is never success: one without a code of its own is bad input.
    .map_err(|(code, e): (u8, anyhow::Error)| (if code == 0 { USAGE } else { code }, e))
}

/// Plain stderr logging; no background thread (tracing-subscriber's fmt writes inline). No
/// colour codes unless stderr is a terminal: a pipe is read by nbgrader, Jupyter or a log file.
fn init_tracing(filter: &str) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
}
