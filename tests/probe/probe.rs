//! `isolate-grade-probe`: a tiny program that runs *inside* the sandbox during the
//! integration tests and reports what the sandboxed process can see.
//!
//! It prints exactly one JSON object on stdout (ids, capabilities, seccomp state,
//! mounts, network devices, environment, open fds, cgroup and resource limits),
//! followed by the results of any access checks requested on the command line:
//!
//! ```text
//! isolate-grade-probe [--try-write PATH] [--try-read PATH] [--exists PATH]
//!                     [--try-mkdir PATH] [--masked PATH] [--sleep SECS] ...
//! ```
//!
//! Many paths do not exist inside the sandbox, so the probe never panics on I/O
//! failures: a field whose source cannot be read holds the error message (a string)
//! instead of its usual value, and failed checks carry their error text.
//! It exits 0 after printing, or 2 on a command-line error.

use serde_json::{json, Map, Value};
use std::ffi::{CStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Keys of `/proc/self/status` that are copied into the report.
const STATUS_KEYS: [&str; 8] =
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters"];

/// One access check requested on the command line: (kind, path).
type Check = (&'static str, PathBuf);

/// Parsed command line.
struct Options {
    checks: Vec<Check>,
    sleep: Option<Duration>,
}

fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Options, String> {
    let mut opts = Options { checks: Vec::new(), sleep: None };
    while let Some(arg) = args.next() {
        let flag = arg.to_string_lossy().into_owned();
        let kind = match flag.as_str() {
            "--try-write" => "write",
            "--try-read" => "read",
            "--exists" => "exists",
            "--try-mkdir" => "mkdir",
            "--masked" => "masked",
            "--sleep" => "sleep",
            _ => return Err(format!("unknown argument: {flag}")),
        };
        let value = args.next().ok_or_else(|| format!("missing value for {flag}"))?;
        if kind == "sleep" {
            let text = value.to_string_lossy();
            let secs = text
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| format!("invalid number of seconds for --sleep: {text}"))?;
            opts.sleep = Some(secs);
        } else {
            opts.checks.push((kind, PathBuf::from(value)));
        }
    }
    Ok(opts)
}

/// Turns a result into JSON, replacing an error with its message.
fn or_error<T: Into<Value>>(result: io::Result<T>) -> Value {
    match result {
        Ok(value) => value.into(),
        Err(err) => Value::String(err.to_string()),
    }
}

fn resuid() -> io::Result<Value> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers refer to live, writable `uid_t` locals.
    if unsafe { libc::getresuid(&mut r, &mut e, &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(json!([r, e, s]))
}

fn resgid() -> io::Result<Value> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers refer to live, writable `gid_t` locals.
    if unsafe { libc::getresgid(&mut r, &mut e, &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(json!([r, e, s]))
}

fn groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: with a size of 0 getgroups only returns the count and writes nothing.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let len = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
    let mut list: Vec<libc::gid_t> = vec![0; len];
    // SAFETY: `list` has room for exactly `count` gids, the size we pass.
    let written = unsafe { libc::getgroups(count, list.as_mut_ptr()) };
    list.truncate(usize::try_from(written).map_err(|_| io::Error::last_os_error())?);
    Ok(list)
}

fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for the `buf.len() - 1` bytes we allow, so the last
    // byte stays 0 and the name is always NUL-terminated.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = CStr::from_bytes_until_nul(&buf).unwrap_or_default();
    Ok(name.to_string_lossy().into_owned())
}

fn status() -> io::Result<Map<String, Value>> {
    let text = fs::read_to_string("/proc/self/status")?;
    let mut map = Map::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if STATUS_KEYS.contains(&key) {
                map.insert(key.to_string(), value.trim().into());
            }
        }
    }
    Ok(map)
}

/// Decodes the `\ooo` octal escapes the kernel uses in mountinfo (e.g. `\040` for space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4).unwrap_or_default();
        let is_escape = bytes[i] == b'\\' && digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d));
        if is_escape {
            let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`. A line looks like
/// `36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue`,
/// with zero or more optional fields before the lone `-` separator.
fn mounts() -> io::Result<Vec<Value>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let mut list = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // Search from field 6 on: the root or mount point could itself be "-".
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-") else {
            continue;
        };
        let sep = sep + 6;
        if fields.len() < sep + 4 {
            continue;
        }
        list.push(json!({
            "mount_point": unescape(fields[4]),
            "options": fields[5],
            "fstype": fields[sep + 1],
            "source": unescape(fields[sep + 2]),
            "super_options": fields[sep + 3],
        }));
    }
    Ok(list)
}

fn net_devices() -> io::Result<Vec<Value>> {
    let text = fs::read_to_string("/proc/self/net/dev")?;
    let names = text.lines().skip(2).filter_map(|line| {
        let (name, _) = line.split_once(':')?;
        Some(Value::from(name.trim()))
    });
    Ok(names.collect())
}

/// Lists `/proc/self/fd`, leaving out the fd of the directory stream used to read it.
fn open_fds() -> io::Result<Vec<i32>> {
    // SAFETY: the argument is a valid NUL-terminated C string literal.
    let dir = unsafe { libc::opendir(c"/proc/self/fd".as_ptr()) };
    if dir.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dir` is a non-null stream from opendir that has not been closed.
    let own_fd = unsafe { libc::dirfd(dir) };
    let mut fds = Vec::new();
    loop {
        // SAFETY: `dir` is still open; readdir returns null at the end of the stream.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: a non-null entry points to a dirent with a NUL-terminated `d_name`
        // that stays valid until the next readdir/closedir on `dir`; we parse it first.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if let Some(fd) = name.to_str().ok().and_then(|n| n.parse::<i32>().ok()) {
            if fd != own_fd {
                fds.push(fd);
            }
        }
    }
    // SAFETY: `dir` came from opendir and is closed exactly once, here.
    unsafe { libc::closedir(dir) };
    fds.sort_unstable();
    Ok(fds)
}

fn rlimits() -> Map<String, Value> {
    let resources = [
        ("core", libc::RLIMIT_CORE),
        ("fsize", libc::RLIMIT_FSIZE),
        ("nofile", libc::RLIMIT_NOFILE),
        ("stack", libc::RLIMIT_STACK),
        ("nproc", libc::RLIMIT_NPROC),
        ("cpu", libc::RLIMIT_CPU),
        ("as", libc::RLIMIT_AS),
    ];
    let limit = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    let mut map = Map::new();
    for (name, resource) in resources {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `rl` is a live, writable rlimit struct.
        let value = if unsafe { libc::getrlimit(resource, &mut rl) } == 0 {
            json!([limit(rl.rlim_cur), limit(rl.rlim_max)])
        } else {
            Value::String(io::Error::last_os_error().to_string())
        };
        map.insert(name.to_string(), value);
    }
    map
}

fn try_write(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        let file = path.join(format!(".probe-write-{}", std::process::id()));
        // create_new(true) opens with O_WRONLY | O_CREAT | O_EXCL.
        OpenOptions::new().write(true).create_new(true).open(&file)?;
        fs::remove_file(&file)
    } else {
        // append(true) without create opens with O_WRONLY | O_APPEND.
        OpenOptions::new().append(true).open(path).map(drop)
    }
}

fn try_read(path: &Path) -> io::Result<()> {
    let mut file = File::open(path)?;
    if !file.metadata()?.is_dir() {
        let _bytes_read = file.read(&mut [0u8; 1])?;
    }
    Ok(())
}

fn try_mkdir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)?;
    fs::remove_dir(path)
}

/// Harmless: absent (a kernel without it), or covered by `/dev/null` (char device 1:3) that
/// can be opened neither for reading nor for writing. `ok` is true when harmless; `error`
/// says what was found otherwise.
fn masked(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    let null = meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 3);
    let opens = File::open(path).is_ok() || OpenOptions::new().append(true).open(path).is_ok();
    if null && !opens {
        return Ok(());
    }
    Err(io::Error::other(format!("present and not masked (char device 1:3: {null}, opens: {opens})")))
}

fn run_check((kind, path): &Check) -> Value {
    let result = match *kind {
        "write" => try_write(path),
        "read" => try_read(path),
        "mkdir" => try_mkdir(path),
        "masked" => masked(path),
        _ => fs::symlink_metadata(path).map(drop),
    };
    json!({
        "kind": kind,
        "path": path.to_string_lossy(),
        "ok": result.is_ok(),
        "error": result.err().map(|e| e.to_string()),
    })
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args_os().skip(1)) {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("isolate-grade-probe: {msg}");
            return ExitCode::from(2);
        }
    };

    let env: Map<String, Value> =
        std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into())).collect();
    let report = json!({
        "uid": or_error(resuid()),
        "gid": or_error(resgid()),
        "groups": or_error(groups()),
        // SAFETY: getpid cannot fail and has no preconditions.
        "pid": unsafe { libc::getpid() },
        // SAFETY: getppid cannot fail and has no preconditions.
        "ppid": unsafe { libc::getppid() },
        "cwd": std::env::current_dir().ok().map(|p| p.to_string_lossy().into_owned()),
        "hostname": or_error(hostname()),
        "status": or_error(status()),
        "mounts": or_error(mounts()),
        "net_devices": or_error(net_devices()),
        "env": env,
        "fds": or_error(open_fds()),
        "cgroup": or_error(fs::read_to_string("/proc/self/cgroup")),
        "rlimits": rlimits(),
        "checks": opts.checks.iter().map(run_check).collect::<Vec<_>>(),
    });

    let mut stdout = io::stdout().lock();
    if writeln!(stdout, "{report}").and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    if let Some(duration) = opts.sleep {
        std::thread::sleep(duration);
    }
    ExitCode::SUCCESS
}
