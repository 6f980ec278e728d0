//! A fault of the sandbox or of the host, never the program's: the step that failed, the
//! errno when there is one (kept, not flattened into text), and what it was about (a path, a
//! call). One type from the host's steps and the sandbox's own ([`crate::plan::Step`]), across
//! the error pipe ([`Fault::encode`], [`Fault::decode`]), into the report's `sandbox_error`.

use crate::plan;
use nix::errno::Errno;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The host's steps, before the sandbox exists and around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStep {
    /// The mode (privileged or rootless) and what it allows this caller.
    Mode,
    /// The state directory and the new root's mount point in it.
    StateDir,
    /// A free slot (uid and cgroup), locked.
    Slot,
    /// The run's cgroup: chosen, created, limited, joined.
    Cgroup,
    /// A kernel's scratch (the tmpfs beneath its working directory).
    Scratch,
    /// The supervisor's pipes to the sandbox (`pipe2`).
    Pipes,
    /// Blocking the relayed signals before the clone (`sigprocmask`).
    SignalMask,
    /// `clone3` into the new namespaces.
    Clone,
    /// A kernel's protocol relay.
    Relay,
    /// The program's stdio pumps.
    Stdio,
    /// The signalfd for relayed signals.
    Signals,
    /// The supervisor's wait for the sandbox (`poll`).
    Poll,
    /// Reaping the sandbox's init (`waitpid`).
    Reap,
    /// The cgroup's accounting while and after the run.
    Accounting,
    /// The sandbox's init ended without reporting the program's status.
    Init,
    /// The sandbox reported a setup failure we could not read.
    Setup,
}

impl HostStep {
    /// The report's `sandbox_error.step`, and for the supervisor's own steps the call that
    /// failed (which leads the message, as `clone3: EPERM: ...`).
    fn names(self) -> (&'static str, Option<&'static str>) {
        use HostStep::*;
        match self {
            Mode => ("mode", None),
            StateDir => ("state-dir", None),
            Slot => ("slot", None),
            Cgroup => ("cgroup", None),
            Scratch => ("scratch", None),
            Init => ("init", None),
            Setup => ("setup", None),
            Pipes => ("supervisor", Some("pipe2")),
            SignalMask => ("supervisor", Some("sigprocmask")),
            Clone => ("supervisor", Some("clone3")),
            Relay => ("supervisor", Some("relay")),
            Stdio => ("supervisor", Some("stdio")),
            Signals => ("supervisor", Some("signalfd")),
            Poll => ("supervisor", Some("poll")),
            Reap => ("supervisor", Some("waitpid")),
            Accounting => ("supervisor", Some("cgroup")),
        }
    }
}

/// Where a fault happened: on the host, or inside the sandbox during its setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Host(HostStep),
    Sandbox(plan::Step),
}

impl From<HostStep> for Step {
    fn from(s: HostStep) -> Step {
        Step::Host(s)
    }
}

impl From<plan::Step> for Step {
    fn from(s: plan::Step) -> Step {
        Step::Sandbox(s)
    }
}

impl PartialEq<plan::Step> for Step {
    fn eq(&self, other: &plan::Step) -> bool {
        matches!(self, Step::Sandbox(s) if s == other)
    }
}

/// As the report names it (`bind /usr`, `exec`, `state-dir`, `supervisor`).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Host(h) => f.write_str(h.names().0),
            Step::Sandbox(s) => s.fmt(f),
        }
    }
}

/// A fault: which step, the errno if one caused it, and what it was about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {}", self.message())]
pub struct Fault {
    pub step: Step,
    pub errno: Option<Errno>,
    /// The path or call it was about, or the whole reason when there is no errno.
    pub context: String,
}

/// An error that can say which errno caused it, apart from its text.
pub trait Cause: fmt::Display {
    /// The errno and the rest of the text, such that `"{context}: {errno}"` (or `context`
    /// alone) is exactly how the error displays itself.
    fn split(&self) -> (Option<Errno>, String) {
        (None, self.to_string())
    }
}

impl Cause for crate::sys::SysError {
    fn split(&self) -> (Option<Errno>, String) {
        (Some(self.errno), format!("{}({})", self.call, self.arg))
    }
}

impl Cause for crate::mounts::MountError {
    fn split(&self) -> (Option<Errno>, String) {
        match self {
            crate::mounts::MountError::Sys { target, source } => {
                let (errno, call) = source.split();
                (errno, format!("{}: {call}", target.display()))
            }
            other => (None, other.to_string()),
        }
    }
}

impl Fault {
    pub fn new(step: impl Into<Step>, cause: &impl Cause) -> Fault {
        let (errno, context) = cause.split();
        Fault { step: step.into(), errno, context }
    }

    /// A fault with no errno: `context` is the whole reason.
    pub fn text(step: impl Into<Step>, context: impl fmt::Display) -> Fault {
        Fault { step: step.into(), errno: None, context: context.to_string() }
    }

    pub fn errno(step: impl Into<Step>, errno: Errno) -> Fault {
        Fault { step: step.into(), errno: Some(errno), context: String::new() }
    }

    /// An I/O error's errno (`EIO` when it has none).
    pub fn io(step: impl Into<Step>, e: &std::io::Error) -> Fault {
        Fault::errno(step, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// The report's `sandbox_error.message`: the call (for the supervisor's steps), the
    /// context, and the errno, each followed by `: ` but the last.
    pub fn message(&self) -> String {
        let call = match &self.step {
            Step::Host(h) => h.names().1,
            Step::Sandbox(_) => None,
        };
        let errno = self.errno.map(|e| e.to_string());
        let context = Some(self.context.as_str()).filter(|c| !c.is_empty());
        [call, context, errno.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": ")
    }

    /// The sandbox's side of the error pipe: a small fixed binary record, written at once.
    /// `IGF1`, the step's tag (u8), its path (u32 length, bytes; empty but for a bind), the
    /// errno (i32, 0 for none), the context (u32 length, UTF-8). Little-endian. Only the
    /// sandbox's own steps cross the pipe.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, path) = match &self.step {
            Step::Sandbox(s) => (s.tag(), s.path().map(|p| p.as_os_str().as_bytes().to_vec()).unwrap_or_default()),
            Step::Host(_) => (HOST_TAG, Vec::new()),
        };
        let mut out = Vec::with_capacity(16 + path.len() + self.context.len());
        out.extend_from_slice(MAGIC);
        out.push(tag);
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(&path);
        out.extend_from_slice(&self.errno.map_or(0, |e| e as i32).to_le_bytes());
        out.extend_from_slice(&(self.context.len() as u32).to_le_bytes());
        out.extend_from_slice(self.context.as_bytes());
        out
    }

    /// The supervisor's side. Whatever arrives, the answer is a fault: one the sandbox could
    /// not describe (truncated, garbage) is a `setup` fault that says so.
    pub fn decode(bytes: &[u8]) -> Fault {
        decode(bytes).unwrap_or_else(|why| {
            Fault::text(
                HostStep::Setup,
                format!(
                    "the sandbox's setup failed, and its report of it is unreadable ({why}, {} bytes: {:?})",
                    bytes.len(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            )
        })
    }
}

const MAGIC: &[u8; 4] = b"IGF1";
/// Never sent by the sandbox, which only fails at its own steps.
const HOST_TAG: u8 = u8::MAX;

fn decode(bytes: &[u8]) -> Result<Fault, &'static str> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("no magic");
    }
    let tag = r.take(1)?[0];
    let path = r.sized()?;
    let errno = i32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
    let context = std::str::from_utf8(r.sized()?).map_err(|_| "context not UTF-8")?.to_string();
    if !r.0.is_empty() {
        return Err("trailing bytes");
    }
    let path = (!path.is_empty()).then(|| PathBuf::from(OsString::from_vec(path.to_vec())));
    let step = plan::Step::from_tag(tag, path).ok_or("unknown step")?;
    Ok(Fault { step: step.into(), errno: (errno != 0).then(|| Errno::from_raw(errno)), context })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn sized(&mut self) -> Result<&'a [u8], &'static str> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SysError;

    #[test]
    fn every_sandbox_step_round_trips_through_the_pipe() {
        let mut steps = plan::Step::ALL.to_vec();
        steps.push(plan::Step::Bind("/usr/lib".into()));
        steps.push(plan::Step::Bind(PathBuf::from(OsString::from_vec(b"/caf\xe9".to_vec()))));
        for step in steps {
            for (errno, context) in [(Some(Errno::EPERM), "pivot_root(/x)"), (None, ""), (Some(Errno::ENOSPC), "")] {
                let f = Fault { step: step.clone().into(), errno, context: context.into() };
                assert_eq!(Fault::decode(&f.encode()), f);
            }
        }
    }

    #[test]
    fn truncated_or_garbage_from_the_pipe_is_a_clear_setup_fault() {
        let good = Fault::new(plan::Step::Exec, &SysError::new("execve", "/bin/nope", Errno::ENOENT)).encode();
        let mut bad: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        bad.push([good.clone(), vec![0]].concat());
        bad.push(b"exec\x1fexecve(/bin/nope): ENOENT".to_vec());
        let mut unknown = good.clone();
        unknown[4] = 200;
        bad.push(unknown);
        let mut huge = good.clone();
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        bad.push(huge);
        for b in bad {
            let f = Fault::decode(&b);
            assert_eq!(f.step, Step::Host(HostStep::Setup), "{b:?}");
            assert!(f.message().starts_with("the sandbox's setup failed, and its report of it is unreadable ("), "{f}");
        }
    }

    /// The report's words are what they were when faults were text.
    #[test]
    fn messages_read_as_the_errors_did() {
        let e = SysError::new("execve", "/bin/nope", Errno::ENOENT);
        let f = Fault::new(plan::Step::Exec, &e);
        assert_eq!((f.step.to_string(), f.message()), ("exec".into(), e.to_string()));
        let m = crate::mounts::MountError::Sys { target: "/usr".into(), source: e.clone() };
        let f = Fault::new(plan::Step::Bind("/usr".into()), &m);
        assert_eq!((f.step.to_string(), f.message()), ("bind /usr".into(), m.to_string()));
        let f = Fault::errno(HostStep::Clone, Errno::EPERM);
        assert_eq!(
            (f.step.to_string(), f.message()),
            ("supervisor".into(), "clone3: EPERM: Operation not permitted".into())
        );
        let f = Fault::errno(HostStep::Scratch, Errno::ENOMEM);
        // as `RunError::Host { step, errno }` said it: "sandbox error at {step}: {errno}"
        assert_eq!(f.to_string(), format!("scratch: {}", Errno::ENOMEM));
        let f = Fault::text(HostStep::Accounting, "cpu.stat: gone");
        assert_eq!(f.message(), "cgroup: cpu.stat: gone");
    }
}
