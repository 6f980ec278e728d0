//! The process exit codes, one type per command, each number written once (README.md, "Exit
//! codes"). Every command shares two: [`USAGE`] (bad input, nothing ran) and [`FAULT`] (the
//! sandbox's or the host's fault, never the submission's). `isolate-grade ASSIGNMENT` (the
//! batch) and `install` keep theirs beside their errors, with the same two shared values.

use crate::report::Status;

/// Bad input: CLI, policy, config, a path the caller may not use. Nothing ran.
pub const USAGE: u8 = 2;
/// Ours or the host's.
pub const FAULT: u8 = 3;

/// `isolate-grade run` and `isolate-grade kernel`: the report's status, or bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RunExit {
    Ok = 0,
    ExitNonzero = 1,
    Usage = USAGE,
    SandboxError = FAULT,
    Signaled = 4,
    TimeoutWall = 5,
    TimeoutCpu = 6,
    MemoryLimit = 7,
    PidsLimit = 8,
    SeccompViolation = 9,
    OutputLimit = 10,
}

impl RunExit {
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<Status> for RunExit {
    fn from(s: Status) -> RunExit {
        match s {
            Status::Ok => RunExit::Ok,
            Status::ExitNonzero => RunExit::ExitNonzero,
            Status::SandboxError => RunExit::SandboxError,
            Status::Signaled => RunExit::Signaled,
            Status::TimeoutWall => RunExit::TimeoutWall,
            Status::TimeoutCpu => RunExit::TimeoutCpu,
            Status::MemoryLimit => RunExit::MemoryLimit,
            Status::PidsLimit => RunExit::PidsLimit,
            Status::SeccompViolation => RunExit::SeccompViolation,
            Status::OutputLimit => RunExit::OutputLimit,
        }
    }
}

/// `isolate-grade check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CheckExit {
    /// Every required item is fine.
    Ready = 0,
    /// The sandbox cannot run on this host.
    NotReady = 1,
    /// An untrusted caller named a config.
    Usage = USAGE,
}

impl CheckExit {
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// `isolate-grade stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StageExit {
    Staged = 0,
    Rejected = 1,
    Usage = USAGE,
    /// Writing the copy failed: the host's doing (disk full), not the submission's.
    Fault = FAULT,
}

impl StageExit {
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// Before a command is known: sanitizing the process or blocking signals failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StartExit {
    Fault = FAULT,
}

impl StartExit {
    pub const fn code(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct within each command, 0 only for success, and the shared two the same
    /// everywhere.
    #[test]
    fn codes_are_distinct_and_shared_ones_agree() {
        let mut run: Vec<u8> = Status::ALL.iter().map(|&s| RunExit::from(s).code()).collect();
        run.push(RunExit::Usage.code());
        let n = run.len();
        run.sort();
        run.dedup();
        assert_eq!(run, (0..=10).collect::<Vec<u8>>());
        assert_eq!(n, run.len());
        for s in Status::ALL {
            assert_eq!(RunExit::from(s) == RunExit::Ok, s == Status::Ok);
        }
        assert_eq!(RunExit::from(Status::SandboxError).code(), 3);
        assert_eq!(RunExit::from(Status::OutputLimit).code(), 10);
        assert_eq!([CheckExit::Ready.code(), CheckExit::NotReady.code(), CheckExit::Usage.code()], [0, 1, 2]);
        assert_eq!(
            [StageExit::Staged.code(), StageExit::Rejected.code(), StageExit::Usage.code(), StageExit::Fault.code()],
            [0, 1, 2, 3]
        );
        assert_eq!(StartExit::Fault.code(), RunExit::SandboxError.code());
        assert_eq!(RunExit::Usage.code(), crate::report::EXIT_USAGE);
    }

    /// The README's table of `run`'s codes is this type's.
    #[test]
    fn readme_documents_runs_codes() {
        let readme = include_str!("../README.md");
        let table = &readme[readme.find("### Exit codes").expect("README section")..];
        for s in Status::ALL {
            let row = format!("| {} | `{}`", RunExit::from(s).code(), s.as_str());
            assert!(table.contains(&row), "README.md lacks {row:?}");
        }
        assert!(table.contains(&format!("| {} | bad input", RunExit::Usage.code())));
    }
}
