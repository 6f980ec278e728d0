//! `isolate-grade kernel`: a Jupyter kernel in the sandbox, as the `argv` prefix of a
//! kernelspec, so that nbgrader's autograde (which stays outside, trusted) runs every cell of a
//! submission in it:
//!
//! ```json
//! {"argv": ["/usr/local/bin/isolate-grade", "kernel", "--bind", "/opt/venv", "--",
//!           "/opt/venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]}
//! ```
//!
//! - The working directory jupyter_client gives the kernel (nbgrader: the submission under
//!   grading, `autograded/<student>/<assignment>/`) is the only part of the course inside: read
//!   only beneath a size-capped scratch that takes the kernel's writes and vanishes with it, its
//!   notebooks (which carry the restored hidden tests) whited out unless `--show-notebooks`.
//! - The kernel gets its own connection file, in a tmpfs only it can reach, with the same key
//!   and port numbers on the sandbox's own loopback (`tcp`, which every kernel implements);
//!   [`crate::relay`] carries exactly its five channels between the host ports the client
//!   chose and those inside. It has no network but that loopback.
//! - Its environment is the policy's: nothing of the caller's (no `JUPYTERHUB_API_TOKEN`; the
//!   caller's `JPY_PARENT_PID`, with which ipykernel would exit under a PID-1 parent, is
//!   replaced by `1`).
//! - SIGINT from the client (nbclient's cell timeout) reaches the kernel through the sandbox's
//!   init; killing this process kills everything in the sandbox; when the kernel ends, this
//!   process ends, which is how jupyter_client notices.
//! - The verdict is written to `--report FILE` (or `--report-dir`/`<kernel id>.json`).

use crate::cli::KernelArgs;
use crate::fault::{Fault, HostStep};
use crate::identity::Caller;
use crate::mounts::{BindSource, Lower, PreparedOverlay, RuntimeDir, Scratch};
use crate::policy::SymlinkMode;
use crate::relay::{Channel, RelaySpec};
use crate::report::KernelInfo;
use crate::request::{Grounds, Input, KernelParts, Request, RequestError};
use crate::run::RunError;
use crate::units;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where the kernel finds its connection file and binds its sockets, inside the sandbox.
pub const RUNTIME_DIR: &str = "/run/kernel";
const CONNECTION: &str = "connection.json";

/// The variables nbgrader sets for the kernels it starts (`utils.setenv` around execution in
/// autograde and validate), passed from the client to the kernel.
pub const FROM_CLIENT: &[&str] = &["NBGRADER_EXECUTION", "NBGRADER_VALIDATING"];

/// The five channels of a connection file, and whether the kernel's side counts as output.
pub const CHANNELS: &[(&str, &str, bool)] = &[
    ("shell", "shell_port", false),
    ("iopub", "iopub_port", true),
    ("stdin", "stdin_port", false),
    ("control", "control_port", false),
    ("hb", "hb_port", false),
];

/// A client's connection file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub ip: IpAddr,
    /// In [`CHANNELS`] order.
    pub ports: Vec<u16>,
    pub key: String,
    pub signature_scheme: String,
    pub kernel_name: String,
}

impl Connection {
    pub fn parse(text: &str) -> Result<Connection, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let transport = v.get("transport").and_then(Value::as_str).unwrap_or("tcp");
        if transport != "tcp" {
            return Err(format!("transport {transport:?}: only tcp is relayed"));
        }
        let ip_text = v.get("ip").and_then(Value::as_str).unwrap_or("127.0.0.1");
        let ip: IpAddr = match ip_text {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            other => other.parse().map_err(|_| format!("ip {other:?} is not an address"))?,
        };
        if !ip.is_loopback() {
            return Err(format!("ip {ip}: the kernel's ports may only be opened on the loopback"));
        }
        let mut ports = Vec::new();
        for (_, key, _) in CHANNELS {
            let port = v.get(*key).and_then(Value::as_u64).ok_or_else(|| format!("{key} is missing"))?;
            let port =
                u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| format!("{key} {port} is not a port"))?;
            // We listen as root: through sudo or setuid, a caller could otherwise take a
            // privileged loopback port (22, say) and pose as a service. Jupyter never picks one.
            if port < 1024 {
                return Err(format!("{key} {port} is a privileged port"));
            }
            if ports.contains(&port) {
                return Err(format!("{key} {port} is used twice"));
            }
            ports.push(port);
        }
        let key = v.get("key").and_then(Value::as_str).ok_or("key is missing")?.to_string();
        Ok(Connection {
            ip,
            ports,
            key,
            signature_scheme: v.get("signature_scheme").and_then(Value::as_str).unwrap_or("hmac-sha256").to_string(),
            kernel_name: v.get("kernel_name").and_then(Value::as_str).unwrap_or("").to_string(),
        })
    }

    /// The kernel's own connection file: same key and ports, on the sandbox's own loopback.
    /// (Not `ipc`: ipykernel binds `ipc://{ip}-{port}`, IRkernel `ipc://{ip}:{port}`, and
    /// xeus yet another way; all of them implement tcp alike.)
    pub fn inside(&self) -> Vec<u8> {
        let mut v = json!({
            "transport": "tcp",
            "ip": "127.0.0.1",
            "key": self.key,
            "signature_scheme": self.signature_scheme,
            "kernel_name": self.kernel_name,
        });
        for ((_, key, _), port) in CHANNELS.iter().zip(&self.ports) {
            v[*key] = json!(port);
        }
        serde_json::to_vec_pretty(&v).expect("serializes")
    }
}

/// The argument that names the connection file: an existing `.json` file that parses as one.
pub fn find_connection_file(argv: &[OsString]) -> Result<(usize, PathBuf), RequestError> {
    let found: Vec<(usize, PathBuf)> = argv
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, a)| (i, PathBuf::from(a)))
        .filter(|(_, p)| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(RequestError::invalid(
            Input::Command,
            "no connection file among the kernel's arguments (the kernelspec's argv needs {connection_file})",
        )),
        _ => Err(RequestError::invalid(Input::Command, "more than one .json file among the kernel's arguments")),
    }
}

/// A kernel's run: validate and prepare as the caller, run it on the host, carry out what it
/// left in its working directory, report.
pub fn execute(config_override: Option<PathBuf>, a: KernelArgs) -> Result<u8, RunError> {
    // First, before anything slow: the client this kernel lives as long as.
    let client = crate::client::pin().map_err(RequestError::from)?;
    let (request, after) = prepare(config_override, &a, client)?;
    let mut report = crate::host::run(request);
    report.kernel = Some(after.finish(&report));
    if let Some(mut f) = after.sink {
        f.write_all((report.to_json() + "\n").as_bytes()).map_err(RunError::Report)?;
    }
    // Into nbgrader's log and formgrader's modal: who, and what happened, in words. Not an
    // end its client asked for (jupyter_client's SIGTERM to a kernel slow to shut down).
    if let Some(why) = report.explanation.as_ref().filter(|w| w.cause != crate::report::Cause::Caller) {
        eprintln!("isolate-grade kernel{}: {}: {}", label(), report.status().as_str(), why.sentence(None));
    }
    Ok(report.end.exit().code())
}

/// What the kernel's run needs once the sandbox has ended.
struct After {
    id: String,
    connection_file: PathBuf,
    /// The submission, outside (the kernel's working directory inside).
    submission: PathBuf,
    output_limit: u64,
    /// Our copy of the scratch: what the kernel wrote is copied out of it.
    scratch: Kept,
    caller: Caller,
    sink: Option<std::fs::File>,
}

/// The kernel's request, and what is kept for afterwards: every check on the caller's input
/// (arguments, connection file, ports, the submission) before anything is written.
fn prepare(config_override: Option<PathBuf>, a: &KernelArgs, client: OwnedFd) -> Result<(Request, After), RunError> {
    let size = |flag: &'static str, v: &str| {
        units::parse_size(v).map_err(|e| RequestError::invalid(Input::Option(flag), e.to_string()))
    };
    let output_limit = size("--output-limit", &a.output_limit)?;
    let scratch_size = size("--scratch-size", &a.scratch_size)?;
    let (connection_arg, conn_path) = find_connection_file(&a.command)?;
    let grounds = Grounds::load(config_override.as_deref(), &a.sandbox)?;
    let caller = grounds.caller.clone();
    let text = caller.read_file(&conn_path)?;
    let conn =
        Connection::parse(&text).map_err(|r| RequestError::invalid(Input::ConnectionFile(conn_path.clone()), r))?;

    let (submission, lower) = submission(a, &caller)?;
    let hide = if a.show_notebooks { vec![] } else { notebooks(&caller, &submission)? };
    let channels = take_ports(&conn)?;
    let id = conn_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    tracing::debug!(kernel = %id, submission = %submission.display(), hidden = hide.len(), "starting kernel");

    let (scratch, kept) = scratch(scratch_size)?;
    let parts = KernelParts {
        overlay: PreparedOverlay { lower, target: submission.clone(), scratch, hide },
        runtime: RuntimeDir { target: RUNTIME_DIR.into(), files: vec![(CONNECTION.into(), conn.inside())] },
        relay: RelaySpec { channels, output_limit },
        client,
        connection_arg,
        connection_inside: Path::new(RUNTIME_DIR).join(CONNECTION),
        env: kernel_env(),
    };
    // Its stdin is empty; its stdout and stderr (which end in the client's log) are escaped
    // and count towards its output limit.
    let stdio = crate::stdio::Spec::Piped(crate::stdio::Piped {
        stdin: crate::stdio::Stdin::Empty,
        output_limit,
        on_limit: crate::stdio::OnLimit::Interrupt,
        escape: crate::stdio::Escape::Always,
    });
    let request = Request::new(grounds, &a.sandbox, &a.command, stdio, Some(parts))?;
    // Last of the caller's input: a request refused above must not create or truncate it.
    let report_path = match (&a.report, &a.report_dir) {
        (Some(file), _) => Some(file.clone()),
        (None, Some(dir)) => Some(dir.join(format!("{id}.json"))),
        (None, None) => None,
    };
    let sink = report_path.map(|p| caller.create_report(&p)).transpose()?;
    let after = After { id, connection_file: conn_path, submission, output_limit, scratch: kept, caller, sink };
    Ok((request, after))
}

/// The submission: by default the working directory jupyter_client gave us (the notebook's
/// directory): the one part of the course inside, opened as the caller.
fn submission(a: &KernelArgs, caller: &Caller) -> Result<(PathBuf, Lower), RunError> {
    let (submission, input) = match &a.submission {
        Some(dir) => (dir.clone(), Input::Option("--submission")),
        None => {
            let cwd = std::env::current_dir();
            (cwd.map_err(|e| RequestError::invalid(Input::WorkingDirectory, e.to_string()))?, Input::WorkingDirectory)
        }
    };
    let submission = crate::policy::sandbox_path(&submission.to_string_lossy(), true)
        .map_err(|r| RequestError::invalid(input.clone(), r))?;
    match caller.open_bind_source(&submission, false, false, SymlinkMode::Error)? {
        Some(BindSource::Tree { fd, is_dir: true }) => Ok((submission, Lower::Tree(fd))),
        Some(BindSource::Path { path, is_dir: true }) => Ok((submission, Lower::Path(path))),
        _ => Err(RequestError::invalid(input, format!("{} is not a directory", submission.display())).into()),
    }
}

/// The client's five ports, taken now: a port in use is a problem of the request.
fn take_ports(conn: &Connection) -> Result<Vec<Channel>, RequestError> {
    let mut channels = Vec::new();
    for ((name, key, is_output), port) in CHANNELS.iter().zip(&conn.ports) {
        let listener = std::net::TcpListener::bind((conn.ip, *port))
            .map_err(|e| RequestError::invalid(Input::Port { key, port: *port, ip: conn.ip }, e.to_string()))?;
        channels.push(Channel { name, listener, inside_port: *port, is_output: *is_output });
    }
    Ok(channels)
}

/// The scratch that takes the kernel's writes, and our copy of it: once the kernel has
/// ended, what it wrote there is copied out to the submission, as bare nbgrader's kernel
/// would have written it.
/// Rootless, the host can't make a tmpfs: the sandbox makes it in its own user namespace and
/// sends us a copy over a unix socket ([`Scratch::InSandbox`]).
fn scratch(size: u64) -> Result<(Scratch, Kept), RunError> {
    let options = crate::mounts::scratch_options(size);
    let fault = |errno| RunError::Host(Fault::errno(HostStep::Scratch, errno));
    if crate::userns::choose().mode == crate::userns::Mode::Rootless {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (send, receive) =
            socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC).map_err(fault)?;
        return Ok((Scratch::InSandbox { options, send }, Kept::FromSandbox(receive)));
    }
    let scratch = crate::sys::raw::tmpfs_detached(&options).map_err(fault)?;
    let kept = scratch.try_clone().map_err(|e| RunError::Host(Fault::io(HostStep::Scratch, &e)))?;
    Ok((Scratch::Detached(scratch), Kept::Fd(kept)))
}

/// Our copy of a kernel's scratch.
enum Kept {
    Fd(OwnedFd),
    /// Rootless: the socket the sandbox sends it over (step 8 of its setup, before anything of
    /// the submission runs; its end is closed right after, so nothing else can be sent).
    FromSandbox(OwnedFd),
}

impl Kept {
    /// The scratch's fd; rootless, the one the sandbox sent, if it got that far.
    fn fd(&self) -> std::io::Result<OwnedFd> {
        match self {
            Kept::Fd(fd) => fd.try_clone(),
            // never waiting: it was sent before the kernel started, or never
            Kept::FromSandbox(socket) => crate::sys::raw::receive_fds::<1>(socket, false).map(|[fd]| fd).map_err(|e| {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    std::io::Error::other(
                        "the sandbox ended before it sent it: the kernel never started, nothing to copy",
                    )
                } else {
                    e
                }
            }),
        }
    }
}

/// The kernel's variables beyond the policy's. Its parent is the sandbox's init, PID 1:
/// saying so is accurate, and ipykernel then neither watches for its parent's death (it
/// would exit, seeing PID 1) nor prints its "Ctrl-C will not work" banner; the caller's own
/// value never reaches the sandbox. What nbgrader tells the kernel it is doing (documented
/// for notebooks that skip slow cells while autograding) passes; nothing else of the
/// client's environment does.
fn kernel_env() -> Vec<(String, String)> {
    let mut env = vec![("JPY_PARENT_PID".to_string(), "1".to_string())];
    for name in FROM_CLIENT {
        if let Ok(v) = std::env::var(name) {
            if !v.contains('\0') && v.len() <= 256 {
                env.push((name.to_string(), v));
            }
        }
    }
    env
}

impl After {
    /// Copy out what the kernel left in its working directory (not after a fault: nothing
    /// ran), and say what the kernel was.
    fn finish(&self, report: &crate::report::Report) -> KernelInfo {
        let copied_out = if report.sandbox_error().is_none() {
            let copied = self.scratch.fd().map_err(crate::copyout::CopyOutError::Scratch).and_then(|scratch| {
                crate::copyout::copy_out(&scratch, &self.submission, &self.caller, crate::copyout::LIMITS)
            });
            match copied {
                Ok(c) => {
                    if c.not_copied_count > 0 {
                        // into nbgrader's log, where the instructor looks (names escaped)
                        eprintln!(
                            "isolate-grade kernel: {} of the files the kernel left in {} were not copied out: {}",
                            c.not_copied_count,
                            self.submission.display(),
                            c.not_copied.join("; ")
                        );
                    }
                    Some(c)
                }
                Err(e) => {
                    eprintln!("isolate-grade kernel: copying the kernel's files out: {e}");
                    None
                }
            }
        } else {
            None
        };
        KernelInfo {
            id: self.id.clone(),
            connection_file: self.connection_file.display().to_string(),
            workdir: self.submission.display().to_string(),
            output_limit: self.output_limit,
            copied_out,
        }
    }
}

/// ` (student alice, notebook problem1 of ps1)`: what the grader set in ISOLATE_GRADE_LABEL
/// for this kernel (src/route.py), escaped and cut short; empty if unset. Never passed into
/// the sandbox.
fn label() -> String {
    match std::env::var_os(LABEL_VAR) {
        Some(l) if !l.is_empty() => {
            let l = crate::escape::line(&l.to_string_lossy());
            let cut: String = l.chars().take(200).collect();
            format!(" ({cut})")
        }
        _ => String::new(),
    }
}

/// The variable the grader names a kernel's student and notebook in.
pub const LABEL_VAR: &str = "ISOLATE_GRADE_LABEL";

/// The notebooks (and their checkpoints) in the working directory, read as the caller.
fn notebooks(caller: &Caller, dir: &Path) -> Result<Vec<String>, RunError> {
    let names = caller.as_caller(|| -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".ipynb") || name == ".ipynb_checkpoints" {
                names.push(name);
            }
        }
        Ok(names)
    })?;
    names.map_err(|e| RequestError::invalid(Input::WorkingDirectory, format!("{}: {e}", dir.display())).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONN: &str = r#"{"shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003, "control_port": 5004,
        "hb_port": 5005, "ip": "127.0.0.1", "key": "k3y", "transport": "tcp",
        "signature_scheme": "hmac-sha256", "kernel_name": "python3"}"#;

    #[test]
    fn connection_files_are_checked() {
        let c = Connection::parse(CONN).unwrap();
        assert_eq!(c.ports, [5001, 5002, 5003, 5004, 5005]);
        let inside: Value = serde_json::from_slice(&c.inside()).unwrap();
        assert_eq!(inside["transport"], "tcp");
        assert_eq!(inside["ip"], "127.0.0.1");
        assert_eq!(inside["iopub_port"], 5002);
        assert_eq!(inside["key"], "k3y");
        for (bad, why) in [
            (CONN.replace("127.0.0.1", "0.0.0.0"), "loopback"),
            (CONN.replace("127.0.0.1", "10.1.2.3"), "loopback"),
            (CONN.replace("\"tcp\"", "\"ipc\""), "only tcp"),
            (CONN.replace("5005", "5001"), "used twice"),
            (CONN.replace("5005", "70000"), "not a port"),
            (CONN.replace("5005", "22"), "privileged port"),
            (CONN.replace("\"key\": \"k3y\",", ""), "key is missing"),
            ("[]".to_string(), "missing"),
        ] {
            let e = Connection::parse(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_connection_file_is_found_among_the_arguments() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("kernel-1.json");
        std::fs::write(&f, CONN).unwrap();
        let argv: Vec<OsString> =
            ["python", "-m", "ipykernel_launcher", "-f", f.to_str().unwrap()].map(OsString::from).into();
        assert_eq!(find_connection_file(&argv).unwrap(), (4, f.clone()));
        let none: Vec<OsString> = ["python", "-m", "ipykernel_launcher"].map(OsString::from).into();
        assert!(find_connection_file(&none).is_err());
    }
}
