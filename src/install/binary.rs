//! Which isolate-grade the kernelspecs start. They outlive the install: the path they record
//! must stay valid, so it is the running binary's real path by default, or `--binary` checked
//! to be this same isolate-grade; and a binary in cargo's build directory, which `cargo clean`
//! empties, is recorded with a warning.

use super::InstallError;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `PATH --version` may take before `--binary PATH` is refused.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// What `isolate-grade --version` prints for this build (clap's `version`).
fn this_version() -> String {
    format!("isolate-grade {}", env!("CARGO_PKG_VERSION"))
}

/// The binary the kernelspecs record: `binary` as given, once checked, or the running one.
/// Run as the caller: `binary` is run (`--version`) with the caller's rights.
pub fn recorded(binary: Option<&Path>) -> Result<PathBuf, InstallError> {
    let Some(p) = binary else {
        // /proc/self/exe is resolved already; canonicalize fails on one replaced or deleted
        // since it started ("... (deleted)")
        let exe =
            std::env::current_exe().map_err(|source| InstallError::Io { path: "/proc/self/exe".into(), source })?;
        return std::fs::canonicalize(&exe).map_err(|e| {
            InstallError::Invalid(format!(
                "the running binary {}: {e} (replaced since it started? run the new one, or pass --binary)",
                exe.display()
            ))
        });
    };
    let bad = |why: String| InstallError::Invalid(format!("--binary {}: {why}", p.display()));
    if !p.is_absolute() {
        return Err(bad("not an absolute path (a kernel is started from the notebook's directory)".into()));
    }
    let meta = std::fs::metadata(p).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not executable".into()));
    }
    let want = this_version();
    match version_of(p) {
        Ok(Some(got)) if got == want => Ok(p.to_path_buf()),
        Ok(Some(got)) => Err(bad(format!(
            "not this isolate-grade: `--version` answered {got:?}, not {want:?} (the kernelspecs must start \
             the same version as the one that writes them)"
        ))),
        Ok(None) => Err(bad(format!(
            "not this isolate-grade: `--version` did not answer within {}s",
            VERSION_TIMEOUT.as_secs()
        ))),
        Err(e) => Err(bad(format!("running it with --version: {e}"))),
    }
}

/// The first line of what `p --version` prints on stdout when it exits successfully (empty
/// otherwise), or `None` when it does not exit in time (it is killed).
fn version_of(p: &Path) -> std::io::Result<Option<String>> {
    use std::process::Stdio;
    let mut child = std::process::Command::new(p)
        .arg("--version")
        .env_clear()
        .envs(crate::runtime::scrubbed_env(&[]))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > VERSION_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        // what is in the pipe now: a process it left behind may hold the pipe open
        nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        let _ = stdout.take(4096).read_to_end(&mut out);
    }
    if !status.success() {
        return Ok(Some(String::new()));
    }
    Ok(Some(String::from_utf8_lossy(&out).lines().next().unwrap_or("").trim().to_string()))
}

/// The cargo build directory `binary` (a real path) lies in, if any: a `target` directory
/// beside a `Cargo.toml`, or one that cargo marked as its own (`.rustc_info.json`, or the
/// `CACHEDIR.TAG` it writes: `CARGO_TARGET_DIR` may be anywhere).
pub fn cargo_build_dir(binary: &Path) -> Option<&Path> {
    binary.ancestors().skip(1).find(|d| {
        let beside_manifest =
            d.file_name() == Some("target".as_ref()) && d.parent().is_some_and(|p| p.join("Cargo.toml").is_file());
        let cachedir_tag = std::fs::read(d.join("CACHEDIR.TAG"))
            .is_ok_and(|t| t.starts_with(b"Signature: 8a477f597d28d172789f06886806bc55"));
        beside_manifest || cachedir_tag || d.join(".rustc_info.json").is_file()
    })
}

/// What install says when the binary it records is in a cargo build directory.
pub fn build_dir_warning(binary: &Path, dir: &Path) -> String {
    format!(
        "warning: the kernelspecs start {}, which is in the cargo build directory {}: grading breaks \
         when that build is cleaned (cargo clean) or removed.\n  \
         Install the binary first (README.md, Install: `cargo install --path . --root /usr/local`, or \
         `install -m 0755 target/release/isolate-grade /usr/local/bin/`) and run the installed one's \
         install, or pass --binary PATH",
        binary.display(),
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARGO_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
                             # This file is a cache directory tag created by cargo.\n";

    /// The build directory found for `bin` in the test's directory `root` (the one it is in,
    /// say `target/tmp`, may be a build directory itself).
    fn found<'a>(bin: &'a Path, root: &Path) -> Option<&'a Path> {
        cargo_build_dir(bin).filter(|d| d.starts_with(root))
    }

    fn touch(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_binary_in_a_target_directory_beside_a_manifest_is_in_a_build_tree() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("proj/target/debug/isolate-grade");
        touch(&bin, "");
        assert_eq!(found(&bin, t.path()), None, "no Cargo.toml yet");
        touch(&t.path().join("proj/Cargo.toml"), "");
        assert_eq!(found(&bin, t.path()), Some(t.path().join("proj/target").as_path()));
        // a cross build, one level deeper
        let cross = t.path().join("proj/target/x86_64-unknown-linux-musl/release/isolate-grade");
        assert_eq!(found(&cross, t.path()), Some(t.path().join("proj/target").as_path()));
    }

    #[test]
    fn a_target_dir_elsewhere_is_known_by_what_cargo_writes_into_it() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("build/release/isolate-grade");
        touch(&bin, "");
        assert_eq!(found(&bin, t.path()), None);
        touch(&t.path().join("build/CACHEDIR.TAG"), CARGO_TAG);
        assert_eq!(found(&bin, t.path()), Some(t.path().join("build").as_path()));

        let other = t.path().join("other/release/isolate-grade");
        touch(&other, "");
        touch(&t.path().join("other/.rustc_info.json"), "{}");
        assert_eq!(found(&other, t.path()), Some(t.path().join("other").as_path()));
    }

    #[test]
    fn an_installed_binary_is_not_in_a_build_tree() {
        let t = tempfile::tempdir().unwrap();
        // a directory named target without a manifest beside it, a foreign CACHEDIR.TAG
        let bin = t.path().join("usr/local/target/bin/isolate-grade");
        touch(&bin, "");
        touch(&t.path().join("usr/local/target/bin/CACHEDIR.TAG"), "not a tag\n");
        touch(&t.path().join("usr/local/target/Cargo.toml"), "");
        assert_eq!(found(&bin, t.path()), None);
        // what `cargo install --root` leaves beside bin/ is no build tree either
        let root = t.path().join("opt/ig");
        touch(&root.join(".crates.toml"), "");
        touch(&root.join(".crates2.json"), "{}");
        assert_eq!(found(&root.join("bin/isolate-grade"), t.path()), None);
    }

    #[test]
    fn the_warning_names_the_binary_the_directory_and_how_to_install() {
        let w = build_dir_warning(Path::new("/p/target/debug/isolate-grade"), Path::new("/p/target"));
        assert!(w.contains("/p/target/debug/isolate-grade") && w.contains("build directory /p/target"), "{w}");
        assert!(w.contains("cargo install --path . --root /usr/local") && w.contains("--binary PATH"), "{w}");
    }

    #[test]
    fn a_binary_is_recorded_only_if_it_is_this_isolate_grade() {
        let refused = |p: &str| match recorded(Some(Path::new(p))) {
            Err(InstallError::Invalid(m)) => m,
            other => panic!("{p}: {other:?}"),
        };
        assert!(refused("isolate-grade").contains("not an absolute path"));
        assert!(refused("/nonexistent/isolate-grade").contains("No such file"));
        assert!(refused("/").contains("not a regular file"));
        assert!(refused("/etc/passwd").contains("not executable"));
        let m = refused("/bin/true");
        assert!(m.contains(r#"answered "true (GNU coreutils)"#) && m.contains(&this_version()), "{m}");
        // the right answer from a program that fails is none; from one that succeeds, it is
        let t = tempfile::tempdir().unwrap();
        let script = |name: &str, code: u8| {
            let p = t.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho '{}'\nexit {code}\n", this_version())).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let failing = script("failing", 1);
        assert!(refused(failing.to_str().unwrap()).contains(r#"answered """#));
        let same = script("same", 0);
        assert_eq!(recorded(Some(&same)).unwrap(), same);
        // the running test binary is no isolate-grade either; its real path is the default
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(recorded(None).unwrap(), exe);
    }
}
