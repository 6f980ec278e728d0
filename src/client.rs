//! Which process a kernel lives as long as: its client (jupyter_client in an nbgrader worker,
//! formgrader's server). If the client is killed, nothing else would ever stop the kernel.
//!
//! Found and pinned with a pidfd as the very first thing `kernel` does: a client killed
//! while the sandbox is being prepared must not leave the wrapper watching whoever adopted it
//! (issue #13: reading the parent only after `run::prepare` missed clients that died in the
//! first ~50 ms, and the kernel then ran until its wall-time limit).
//!
//! - jupyter_client names itself in `JPY_PARENT_PID`; when set it must name a running
//!   ancestor of ours (sudo or a wrapper may stand between). If it doesn't, the client ended
//!   before we could look, and we were adopted: refuse.
//! - Without it (sudo resets the environment): our parent, or the first ancestor above the
//!   sudo processes in between (sudo outlives a killed client, waiting for us).
//!
//! The chain is read again after the pidfd is open, so a pid reused in between is never
//! taken for the client. The caller controls `JPY_PARENT_PID`, as it controls its client:
//! naming another of its ancestors only lets its kernel run longer, within its own limits.

use std::os::fd::OwnedFd;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the client (pid {pid}, from JPY_PARENT_PID) ended before its kernel started")]
    Gone { pid: i32 },
    #[error("JPY_PARENT_PID={0:?} is not a process id")]
    BadPid(String),
    #[error("watching the client (pid {pid}): {source}")]
    Pin { pid: i32, source: nix::errno::Errno },
    #[error("the client (pid {pid}) changed while it was being pinned: it ended")]
    Changed { pid: i32 },
}

/// How many ancestors above our parent are looked at (sudo and its monitor process, a wrapper).
const MAX_HOPS: usize = 4;

/// What we know of a process from its `/proc/PID/status`: its parent, name and real uid.
#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub ppid: i32,
    pub name: String,
    pub uid: u32,
}

/// Reads a process's parent, name and uid (`None`: it is gone). A seam for the unit tests.
pub trait Procs {
    fn get(&self, pid: i32) -> Option<Proc>;
}

pub struct RealProcs;

impl Procs for RealProcs {
    fn get(&self, pid: i32) -> Option<Proc> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()).map(String::from)
        };
        Some(Proc { ppid: field("PPid:")?.parse().ok()?, name: field("Name:")?, uid: field("Uid:")?.parse().ok()? })
    }
}

/// Our ancestors, nearest first, starting with `parent` (at most `MAX_HOPS + 1`).
fn ancestors(procs: &impl Procs, parent: i32) -> Vec<(i32, Option<Proc>)> {
    let mut chain = vec![];
    let mut pid = parent;
    for _ in 0..=MAX_HOPS {
        let p = procs.get(pid);
        let next = p.as_ref().map(|p| p.ppid);
        chain.push((pid, p));
        match next {
            Some(n) if n > 0 => pid = n,
            _ => break,
        }
    }
    chain
}

/// The client's pid, given our parent and `JPY_PARENT_PID`.
pub fn find(procs: &impl Procs, parent: i32, named: Option<&str>) -> Result<i32, ClientError> {
    let chain = ancestors(procs, parent);
    if let Some(named) = named {
        let pid: i32 = named.trim().parse().map_err(|_| ClientError::BadPid(named.into()))?;
        return match chain.iter().any(|(p, _)| *p == pid) {
            true => Ok(pid),
            false => Err(ClientError::Gone { pid }),
        };
    }
    let is_sudo = |p: &Option<Proc>| p.as_ref().is_some_and(|p| p.name == "sudo" && p.uid == 0);
    Ok(chain.iter().find(|(_, p)| !is_sudo(p)).map_or(parent, |(pid, _)| *pid))
}

/// Find the client and pin it; called first thing, before anything slow.
pub fn pin() -> Result<OwnedFd, ClientError> {
    let parent = nix::unistd::getppid().as_raw();
    let named = std::env::var("JPY_PARENT_PID").ok();
    let client = find(&RealProcs, parent, named.as_deref())?;
    let fd = crate::sys::raw::pidfd_open(client).map_err(|source| match source {
        nix::errno::Errno::ESRCH => ClientError::Changed { pid: client },
        source => ClientError::Pin { pid: client, source },
    })?;
    if nix::unistd::getppid().as_raw() != parent || find(&RealProcs, parent, named.as_deref())? != client {
        return Err(ClientError::Changed { pid: client });
    }
    tracing::debug!(client, parent, "watching the client");
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<i32, Proc>);
    impl Procs for Fake {
        fn get(&self, pid: i32) -> Option<Proc> {
            self.0.get(&pid).cloned()
        }
    }
    fn tree(procs: &[(i32, i32, &str, u32)]) -> Fake {
        Fake(procs.iter().map(|&(pid, ppid, name, uid)| (pid, Proc { ppid, name: name.into(), uid })).collect())
    }

    #[test]
    fn the_named_client_must_be_an_ancestor() {
        // worker 100 -> sudo 200 -> us
        let t = tree(&[(1, 0, "init", 0), (100, 1, "python3", 1000), (200, 100, "sudo", 0)]);
        assert_eq!(find(&t, 200, Some("100")).unwrap(), 100);
        assert_eq!(find(&t, 100, Some("100")).unwrap(), 100);
        // the client died before we looked: we were adopted by init
        assert!(matches!(find(&t, 1, Some("100")), Err(ClientError::Gone { pid: 100 })));
        // a pid that is running but is no ancestor of ours is not our client
        assert!(matches!(find(&t, 200, Some("300")), Err(ClientError::Gone { .. })));
        assert!(matches!(find(&t, 200, Some("x")), Err(ClientError::BadPid(_))));
    }

    #[test]
    fn without_a_name_sudo_is_skipped() {
        // client 100 -> sudo 200 -> sudo monitor 201 -> us
        let t = tree(&[(1, 0, "init", 0), (100, 1, "python3", 1000), (200, 100, "sudo", 0), (201, 200, "sudo", 0)]);
        assert_eq!(find(&t, 201, None).unwrap(), 100);
        assert_eq!(find(&t, 100, None).unwrap(), 100);
        // a caller's own program called "sudo" is not root's sudo
        let t = tree(&[(1, 0, "init", 0), (100, 1, "python3", 1000), (200, 100, "sudo", 1000)]);
        assert_eq!(find(&t, 200, None).unwrap(), 200);
    }
}
