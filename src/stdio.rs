//! The sandbox's fds 0, 1 and 2: never anything the caller opened.
//!
//! A program inherits its parent's stdio. Handed the caller's, sandboxed code holds the
//! instructor's terminal (it could read what is typed there, a sudo password included, turn
//! echo off, or write escape sequences and fake lines), a host log file (`ftruncate` it, forge
//! it) or a pipe (write past every output limit). "No controlling terminal" does not help:
//! the fd *is* the terminal. So the sandbox gets three pipes of the supervisor's instead:
//!
//! - **stdin**: empty for a kernel (the write end is closed before the program starts). For
//!   `run`, the caller's stdin, copied in by a thread (a pipe, a file: test input is a real
//!   use), never writable from inside; a terminal is never copied (the program gets an empty
//!   stdin) unless `run --tty` hands the caller's fds over as they are.
//! - **stdout, stderr**: read by one thread, counted against the output limit together,
//!   and written to the caller's fd 1 and 2 as data. Past the limit the rest is read and
//!   dropped, and the sandbox is stopped (`run`: killed) or interrupted (a kernel: SIGINT, as
//!   for its cell output); the report says `output-limit`. Text is escaped
//!   ([`crate::escape`]) where it would reach a person: always for a kernel (its stdout and
//!   stderr end in the client's log), and for `run` when the caller's fd is a terminal; to a
//!   pipe or a file, `run`'s output passes byte for byte.
//!
//! The threads start after the sandbox was cloned (this process never forks again) and the
//! output thread ends when every process of the sandbox is gone, which closes the pipes.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{isatty, pipe2};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Where the sandbox's stdin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// End-of-file at once.
    Empty,
    /// The caller's stdin, copied in (refused by the caller's side when it is a terminal).
    Caller,
}

/// What to do to the sandbox when its stdout and stderr pass the output limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    /// `run`: the program has produced all it may.
    Kill,
    /// A kernel: interrupt what it is doing (the cell), as for its cell output.
    Interrupt,
}

/// When the output is escaped on its way to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    Always,
    OnTerminal,
}

/// How the sandbox's fds 0-2 are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// Pipes of the supervisor's (the default, and the only way for a kernel).
    Piped(Piped),
    /// `run --tty`: the caller's fds 0-2, as they are (the README says what that exposes).
    Inherit,
}

/// What goes through the pipes, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piped {
    pub stdin: Stdin,
    pub output_limit: u64,
    pub on_limit: OnLimit,
    pub escape: Escape,
}

/// The three pipes: the sandbox's ends (its fds 0, 1, 2) and ours.
pub struct Pipes {
    pub sandbox: [OwnedFd; 3],
    pub host: HostEnds,
}

/// Our ends of the pipes.
pub struct HostEnds {
    stdin_w: OwnedFd,
    stdout_r: OwnedFd,
    stderr_r: OwnedFd,
}

/// Close-on-exec pipes, made before the clone. The sandbox `dup2`s its ends onto 0-2 (plan
/// step 13), which clears close-on-exec on those copies only.
pub fn pipes() -> Result<Pipes, Errno> {
    let (stdin_r, stdin_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_r, stderr_w) = pipe2(OFlag::O_CLOEXEC)?;
    Ok(Pipes { sandbox: [stdin_r, stdout_w, stderr_w], host: HostEnds { stdin_w, stdout_r, stderr_r } })
}

/// The thread passing the sandbox's output on to the caller (and, unless the caller's stdin
/// is empty, the thread copying it in).
pub struct Pumps {
    output: JoinHandle<()>,
    /// A message once the output thread has passed everything on.
    done: std::sync::mpsc::Receiver<()>,
    bytes: Arc<AtomicU64>,
    exceeded: Arc<AtomicBool>,
}

/// How long [`Pumps::finish`] waits, once the sandbox is gone, for the caller to take the
/// rest of its output: a caller that stops reading its own stdout must not hang the
/// supervisor (and with it, the report).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

struct Counter {
    bytes: Arc<AtomicU64>,
    exceeded: Arc<AtomicBool>,
    limit: u64,
    on_limit: OnLimit,
    pidfd: RawFd,
}

/// Start copying for the sandbox behind `pidfd` (its init), which should outlive
/// [`Pumps::finish`]. The sandbox's ends must be closed in this process already.
///
/// One thread passes both stdout and stderr on (a thread costs ~0.1 ms of a run's start and
/// end, which for a short program is most of what it takes); stdin gets a thread of its own
/// only when there is something to copy: `/dev/null` is end-of-file, like [`Stdin::Empty`].
pub fn start(spec: Piped, ends: HostEnds, pidfd: RawFd) -> std::io::Result<Pumps> {
    let Piped { stdin, output_limit, on_limit, escape } = spec;
    let HostEnds { stdin_w, stdout_r, stderr_r } = ends;
    match stdin {
        // Dropping the write end: the sandbox reads end-of-file.
        Stdin::Empty => drop(stdin_w),
        Stdin::Caller if is_dev_null(std::io::stdin().as_fd()) => drop(stdin_w),
        Stdin::Caller => {
            // Not joined: it may wait on the caller's stdin for ever, and owns nothing else.
            std::thread::Builder::new().name("stdin".into()).spawn(move || copy_stdin(stdin_w))?;
        }
    }
    let bytes = Arc::new(AtomicU64::new(0));
    let exceeded = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = std::sync::mpsc::channel();
    let counter = Counter { bytes: bytes.clone(), exceeded: exceeded.clone(), limit: output_limit, on_limit, pidfd };
    let escaped = |to: BorrowedFd<'_>| escape == Escape::Always || isatty(to).unwrap_or(false);
    let (out, err) = (std::io::stdout(), std::io::stderr());
    let streams = [Stream::new(stdout_r, escaped(out.as_fd())), Stream::new(stderr_r, escaped(err.as_fd()))];
    let output = std::thread::Builder::new().name("output".into()).spawn(move || {
        pump(streams, [out.as_fd(), err.as_fd()], &counter);
        let _ = done_tx.send(());
    })?;
    Ok(Pumps { output, done, bytes, exceeded })
}

/// Whether `fd` is the null device (reads end-of-file at once).
fn is_dev_null(fd: BorrowedFd<'_>) -> bool {
    match nix::sys::stat::fstat(fd) {
        Ok(st) => {
            st.st_mode & libc::S_IFMT == libc::S_IFCHR
                && nix::sys::stat::major(st.st_rdev) == 1
                && nix::sys::stat::minor(st.st_rdev) == 3
        }
        Err(_) => false,
    }
}

impl Pumps {
    /// Wait until the sandbox's output is all passed on (every process of it must be gone);
    /// returns (output bytes, whether the limit was passed).
    pub fn finish(self) -> (u64, bool) {
        match self.done.recv_timeout(DRAIN_GRACE) {
            Ok(()) => {
                let _ = self.output.join();
            }
            Err(_) => tracing::warn!("the caller is not reading the program's output: the rest is dropped"),
        }
        (self.bytes.load(Ordering::Relaxed), self.exceeded.load(Ordering::Relaxed))
    }
}

fn copy_stdin(to: OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    let stdin = std::io::stdin();
    loop {
        let n = match nix::unistd::read(stdin.as_fd(), &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        if write_all(to.as_fd(), &buf[..n]).is_err() {
            return; // the program closed its stdin, or ended
        }
    }
}

/// One of the sandbox's output pipes, as the output thread reads it.
struct Stream {
    from: OwnedFd,
    open: bool,
    /// Whether the caller still takes what we write.
    writable: bool,
    text: Option<Utf8Escaper>,
}

impl Stream {
    fn new(from: OwnedFd, escaped: bool) -> Stream {
        Stream { from, open: true, writable: true, text: escaped.then(Utf8Escaper::default) }
    }
}

/// Pass the sandbox's stdout and stderr on to `to` (the caller's) until both are at
/// end-of-file, counting them together against the limit.
fn pump(mut streams: [Stream; 2], to: [BorrowedFd<'_>; 2], c: &Counter) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    while streams.iter().any(|s| s.open) {
        let open: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].open).collect();
        let mut fds: Vec<PollFd> =
            open.iter().map(|&i| PollFd::new(streams[i].from.as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let ready: Vec<usize> = open
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(&i, _)| i)
            .collect();
        for i in ready {
            let s = &mut streams[i];
            let n = match nix::unistd::read(&s.from, &mut buf) {
                Ok(0) => {
                    s.open = false;
                    continue;
                }
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    s.open = false;
                    continue;
                }
            };
            let before = c.bytes.fetch_add(n as u64, Ordering::Relaxed);
            let allowed = c.limit.saturating_sub(before).min(n as u64) as usize;
            if allowed < n && !c.exceeded.swap(true, Ordering::Relaxed) {
                let signal = match c.on_limit {
                    OnLimit::Kill => libc::SIGKILL,
                    OnLimit::Interrupt => libc::SIGINT,
                };
                tracing::info!(limit = c.limit, signal, "output limit: stdout/stderr cut");
                let _ = crate::sys::raw::pidfd_send_signal(c.pidfd, signal);
            }
            // Past the limit (or once the caller stopped reading) the rest is read and
            // dropped, so the sandbox never blocks on a full pipe.
            if allowed == 0 || !s.writable {
                continue;
            }
            let data = match s.text.as_mut() {
                None => &buf[..allowed],
                Some(e) => {
                    out.clear();
                    e.feed(&buf[..allowed], &mut out);
                    &out[..]
                }
            };
            s.writable = write_all(to[i], data).is_ok();
        }
    }
    for (s, to) in streams.iter_mut().zip(to) {
        if let (Some(e), true) = (s.text.as_mut(), s.writable) {
            out.clear();
            e.finish(&mut out);
            let _ = write_all(to, &out);
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`crate::escape::bytes`] over a byte stream: a UTF-8 character split across reads is
/// held back until its last byte arrives.
#[derive(Default)]
pub struct Utf8Escaper {
    pending: Vec<u8>,
}

impl Utf8Escaper {
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(bytes);
        let complete = self.pending.len() - incomplete_tail(&self.pending);
        out.extend_from_slice(crate::escape::bytes(&self.pending[..complete]).as_bytes());
        self.pending.drain(..complete);
    }

    /// The stream ended: what is held back is not UTF-8.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(crate::escape::bytes(&std::mem::take(&mut self.pending)).as_bytes());
    }
}

/// How many bytes at the end of `b` begin a UTF-8 character that needs more bytes.
fn incomplete_tail(b: &[u8]) -> usize {
    for i in 1..=b.len().min(3) {
        let byte = b[b.len() - i];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: its lead is further back
        }
        let needs = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if needs > i { i } else { 0 };
    }
    0
}

/// Make sure fds 0, 1 and 2 are open (on `/dev/null` if the caller closed them), so that
/// nothing we open later lands on them and is taken for stdio.
pub fn ensure_standard_fds() -> Result<(), Errno> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether the fd number is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let null = nix::fcntl::open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty())?;
            // The lowest free number: the one that was closed. Kept open for the process's life.
            if std::os::fd::IntoRawFd::into_raw_fd(null) != fd {
                return Err(Errno::EBADF);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(chunks: &[&[u8]]) -> String {
        let mut e = Utf8Escaper::default();
        let mut out = Vec::new();
        for c in chunks {
            e.feed(c, &mut out);
        }
        e.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_stream_is_escaped_whatever_its_chunks() {
        let text = "ok\n\x1b]0;pwned\x07\x1b[2J\r\u{202e}ü€\n";
        let whole = escaped(&[text.as_bytes()]);
        assert_eq!(whole, "ok\n\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\u{202e}ü€\n");
        // split inside every multi-byte character: the same text
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(escaped(&[&bytes[..cut], &bytes[cut..]]), whole, "cut at {cut}");
        }
        // not UTF-8: shown as bytes, and the C1 control CSI (U+009B) too
        assert_eq!(escaped(&[b"a\xff\xc3", b"(b\xc2\x9b[", b"\xe2\x82"]), "a\\xff\\xc3(b\\u{009b}[\\xe2\\x82");
    }
}
