//! What the binary writes to stderr when it is not a terminal: no colour codes.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// A log event (the caller, at debug, before the policy is refused) written to a pipe has no
/// ANSI escape sequence. Runs as anyone: nothing is started.
#[test]
fn log_lines_to_a_pipe_have_no_colour_codes() {
    let out = Command::new(bin())
        .args(["--log", "debug", "run", "--policy", "/nonexistent/policy.toml", "--", "/bin/true"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG") && stderr.contains("caller"), "no log event: {stderr}");
    assert!(!stderr.contains("\x1b["), "colour codes in {stderr:?}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}
