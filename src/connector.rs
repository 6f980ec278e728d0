//! Rootless, how the relay reaches a kernel's loopback: sockets made in the sandbox's network
//! namespace by a small process of ours, and handed over.
//!
//! Privileged, the relay's thread enters the sandbox's network namespace once
//! ([`crate::relay`]). Rootless it can't: `setns` into a network namespace needs
//! `CAP_SYS_ADMIN` in the caller's own user namespace too, a thread of a multithreaded process
//! may not join another user namespace, and the sandbox (not dumpable) can't be reached
//! through its pidfd or `/proc` by an unprivileged process. A socket belongs to the network
//! namespace it was made in, wherever it is used afterwards. So the sandbox sends its own user
//! and network namespaces (step 1 of its plan, as soon as it is mapped), and the supervisor
//! forks, before any thread of its exists, a connector that receives them, joins them (the
//! user namespace's owner, it has every capability there), closes every other fd, and then
//! answers each request with one fresh, unconnected TCP socket. It makes nothing else: no
//! connect, no bind, no file. It lives in the host's PID and mount namespaces, where nothing in
//! the sandbox can see or reach it, is not dumpable, and ends when its socket closes or the
//! supervisor dies.

use crate::sys::raw;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{sendmsg, socket, AddressFamily, ControlMessage, MsgFlags};
use nix::sys::socket::{socketpair, SockFlag, SockType};
use nix::unistd::{ForkResult, Pid};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

/// What the connector answers when it is ready: one byte, 0, or the errno of its `setns`.
const READY: u8 = 0;

/// A running connector; dropping it ends it.
#[derive(Debug)]
pub struct Connector {
    socket: OwnedFd,
    pid: Pid,
    /// It said it joined the sandbox's namespaces.
    ready: bool,
}

impl Connector {
    /// Fork the connector, which takes the sandbox's namespaces from `namespaces` (the other
    /// end of [`crate::plan::Plan::namespaces`]). Only while this process has a single thread
    /// (the supervisor, right after the clone, before the relay's and stdio's threads). Not
    /// waiting for it: a sandbox that fails before it sends them reports its own fault.
    pub fn start(namespaces: OwnedFd) -> std::io::Result<Connector> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let parent = nix::unistd::getpid();
        // SAFETY: the caller guarantees a single-threaded process; the child only makes
        // syscalls and leaves with `_exit`.
        match unsafe { nix::unistd::fork() }? {
            ForkResult::Child => {
                drop(ours);
                raw::exit_now(serve(theirs, namespaces, parent))
            }
            ForkResult::Parent { child } => Ok(Connector { socket: ours, pid: child, ready: false }),
        }
    }

    /// A fresh TCP socket in the sandbox's network namespace, not connected yet.
    pub fn socket(&mut self) -> std::io::Result<OwnedFd> {
        if !self.ready {
            let mut answer = [0u8; 1];
            match nix::sys::socket::recv(self.socket.as_raw_fd(), &mut answer, MsgFlags::empty())? {
                1 if answer[0] == READY => self.ready = true,
                1 => return Err(std::io::Error::from_raw_os_error(answer[0] as i32)),
                _ => return Err(std::io::Error::other("the connector ended before it joined the sandbox")),
            }
        }
        nix::sys::socket::send(self.socket.as_raw_fd(), b"s", MsgFlags::empty())?;
        raw::receive_fds::<1>(&self.socket, true).map(|[fd]| fd)
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        // Our end closing ends it; then reap it.
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The connector's side: join, say so, then one socket per request until the socket closes.
fn serve(ours: OwnedFd, namespaces: OwnedFd, parent: Pid) -> i32 {
    use crate::sys::Sys;
    let fd = ours.as_raw_fd();
    // Never outlive the supervisor (nor miss its death before this call); nobody of our uid
    // may ptrace us (nothing we do afterwards resets it: no exec, no uid change).
    let _ = raw::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    if nix::unistd::getppid() != parent {
        return 1;
    }
    let _ = raw::set_non_dumpable();
    // Every other fd goes first: the supervisor's pipes, listeners and pidfds are not ours.
    let closed = crate::sys::linux::LinuxSys.close_fds_except(&[fd, namespaces.as_raw_fd()]).map_err(|e| e.errno);
    let joined = closed.and_then(|()| {
        let [user, net] = raw::receive_fds::<2>(&namespaces, true)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ECHILD)))?;
        // We are single-threaded (just forked), as joining a user namespace requires; the
        // user namespace first: there we have the capability the network one needs.
        nix::sched::setns(user, CloneFlags::CLONE_NEWUSER)?;
        nix::sched::setns(net, CloneFlags::CLONE_NEWNET)
    });
    drop(namespaces);
    let answer = match joined {
        Ok(()) => READY,
        Err(errno) => errno as i32 as u8,
    };
    if nix::sys::socket::send(fd, &[answer], MsgFlags::empty()).is_err() || answer != READY {
        return 1;
    }
    let mut request = [0u8; 1];
    while let Ok(1) = nix::sys::socket::recv(fd, &mut request, MsgFlags::empty()) {
        let Ok(tcp) = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None) else {
            return 1;
        };
        let fds = [tcp.as_raw_fd()];
        let iov = [IoSlice::new(b"s")];
        if sendmsg::<()>(fd, &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None).is_err() {
            return 1;
        }
    }
    0
}
