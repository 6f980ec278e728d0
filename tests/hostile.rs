//! Hostile callers. The helper is used through a sudo rule (simulated here: root with
//! `SUDO_UID`/`SUDO_GID` set, which is all the helper looks at) or installed setuid-root (a
//! root-owned `chmod 4755` copy, run as an unprivileged user with `setpriv`). Everything such a
//! caller controls (group membership, bind sources, the report path, the config, the limits,
//! the environment) must be refused with exit 2 and a clear message before anything runs, or
//! neutralised.
//!
//! Untrusted callers always read `/etc/isolate-grade/config.toml`, so this file installs one
//! for its duration ([`SystemGuard`] restores or removes it), together with the group and the
//! two users it needs. Every case runs in ONE `#[test]`; the regression tests for bugs this
//! suite found take the same lock ([`serial`]), so nothing here ever races on the config.

mod common;
use common::*;

use serde_json::{json, Value};
use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tempfile::TempDir;

const GROUP: &str = "isolate-grade-test";
const CALLER: &str = "igtest-caller";
const OUTSIDER: &str = "igtest-outsider";
const CONFIG_DIR: &str = "/etc/isolate-grade";
const CONFIG: &str = "/etc/isolate-grade/config.toml";
const CONFIG_TEXT: &str = "allowed_group = \"isolate-grade-test\"\n\n[max]\nmemory = \"512M\"\npids = 64\n";
/// Within the maxima above (the default policy's 1G and 128 processes are not).
const OK_MEMORY: &str = "--memory=256M";
const OK_PIDS: &str = "--pids=32";
/// What the sandboxed program prints when it runs at all.
const RAN: &str = "IG-PROGRAM-RAN";
const ECHO: &[&str] = &["/bin/echo", RAN];
const INSECURE: &str = "must be owned by root and writable by nobody else";
/// The default policy's PATH: the sandboxed program must see this one, never the caller's.
const POLICY_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

// ---------------------------------------------------------------------------------------------
// The system state: config, group, users. Installed once, undone on drop (also on panic).
// ---------------------------------------------------------------------------------------------

struct Backup {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Installs the test config, group and users; on drop restores whatever was there before.
#[derive(Default)]
struct SystemGuard {
    created_group: bool,
    created_users: Vec<&'static str>,
    created_dir: bool,
    /// Mode of a config directory that existed before (the cases change it).
    dir_mode: Option<u32>,
    /// The config that was there before, put back on drop; `None`: remove ours.
    backup: Option<Backup>,
    /// Files the cases try to make the helper create; removed should that ever succeed.
    must_not_exist: Vec<PathBuf>,
}

impl SystemGuard {
    fn install() -> SystemGuard {
        // Built up field by field: a panic half-way still undoes what was done.
        let mut g = SystemGuard::default();
        if group_gid(GROUP).is_none() {
            sh(Command::new("groupadd").args(["-f", GROUP]));
            g.created_group = true;
        }
        for (name, groups) in [(CALLER, Some(GROUP)), (OUTSIDER, None)] {
            if ids(name).is_none() {
                let mut c = Command::new("useradd");
                c.args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]);
                if let Some(grp) = groups {
                    c.args(["-G", grp]);
                }
                sh(c.arg(name));
                g.created_users.push(name);
            }
        }
        match fs::symlink_metadata(CONFIG_DIR) {
            Ok(md) => g.dir_mode = Some(md.mode() & 0o7777),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir(CONFIG_DIR).unwrap();
                g.created_dir = true;
                chmod(Path::new(CONFIG_DIR), 0o755);
            }
            Err(e) => panic!("{CONFIG_DIR}: {e}"),
        }
        match fs::symlink_metadata(CONFIG) {
            Ok(md) if md.file_type().is_symlink() => panic!("{CONFIG} is a symlink: not touching it"),
            Ok(md) => {
                g.backup = Some(Backup {
                    bytes: fs::read(CONFIG).unwrap(),
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("{CONFIG}: {e}"),
        }
        write_config();
        g
    }
}

impl Drop for SystemGuard {
    fn drop(&mut self) {
        let config = Path::new(CONFIG);
        match &self.backup {
            Some(b) => {
                let _ = fs::remove_file(config); // it may be a symlink a case left behind
                let restored = fs::write(config, &b.bytes)
                    .and_then(|()| chown(config, Some(b.uid), Some(b.gid)))
                    .and_then(|()| fs::set_permissions(config, fs::Permissions::from_mode(b.mode)));
                if let Err(e) = restored {
                    eprintln!("hostile: could not restore {CONFIG}: {e}");
                }
            }
            None => {
                let _ = fs::remove_file(config);
            }
        }
        if self.created_dir {
            // Only if empty: never remove what someone else put there meanwhile.
            let _ = fs::remove_dir(CONFIG_DIR);
        } else if let Some(mode) = self.dir_mode {
            let _ = fs::set_permissions(CONFIG_DIR, fs::Permissions::from_mode(mode));
        }
        for p in &self.must_not_exist {
            let _ = fs::remove_file(p);
        }
        for user in &self.created_users {
            let _ = Command::new("userdel").arg(user).stderr(Stdio::null()).status();
        }
        if self.created_group {
            let _ = Command::new("groupdel").arg(GROUP).stderr(Stdio::null()).status();
        }
    }
}

/// Our config, root-owned and not writable by others (also used to repair it between cases).
fn write_config() {
    let config = Path::new(CONFIG);
    if config.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(config).unwrap();
    }
    fs::write(config, CONFIG_TEXT).unwrap();
    chown(config, Some(0), Some(0)).unwrap();
    chmod(config, 0o644);
    chmod(Path::new(CONFIG_DIR), 0o755);
}

// ---------------------------------------------------------------------------------------------
// The fixture: users, the setuid copy, input files, and a way to run the helper as someone.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Ids {
    name: &'static str,
    uid: u32,
    gid: u32,
}

/// How the helper is reached. `Root` is the trusted caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Root,
    Sudo,
    Setuid,
}

const UNTRUSTED: [Via; 2] = [Via::Sudo, Via::Setuid];

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

struct Fixture {
    caller: Ids,
    outsider: Ids,
    setuid_bin: PathBuf,
    /// Root-owned, 0755: the probe, root-only secrets, the evil library and programs.
    inputs: TempDir,
    /// Owned by the caller, 0755: their reports, symlinks and policies.
    work: TempDir,
    /// World-writable and sticky, like /tmp.
    sticky: TempDir,
    secret: String,
    shadow_first_line: String,
    evil_so_built: bool,
    _setuid_dir: TempDir,
    // Last: dropped after the directories above.
    _system: SystemGuard,
}

impl Fixture {
    fn new() -> Fixture {
        let mut system = SystemGuard::install();
        let caller = ids(CALLER).expect("caller user");
        let outsider = ids(OUTSIDER).expect("outsider user");
        let gid = group_gid(GROUP).expect("group");
        assert!(groups_of(&caller).contains(&gid), "{CALLER} must be in {GROUP}");
        assert!(!groups_of(&outsider).contains(&gid), "{OUTSIDER} must not be in {GROUP}");

        // The setuid copy: root-owned, mode 4755, in a root-owned directory whose ancestors are
        // root-owned and not writable by others (not under /tmp, and not /root: 0700).
        let base = ["/usr/local/libexec", "/usr/local"].map(Path::new).into_iter().find(|p| p.is_dir()).unwrap();
        let setuid_dir = tempfile::Builder::new().prefix("isolate-grade-test-").tempdir_in(base).unwrap();
        chmod(setuid_dir.path(), 0o755);
        let setuid_bin = setuid_dir.path().join("isolate-grade");
        fs::copy(bin(), &setuid_bin).unwrap();
        chown(&setuid_bin, Some(0), Some(0)).unwrap();
        chmod(&setuid_bin, 0o4755); // after chown, which clears the setuid bit
        let mut p = Some(setuid_bin.as_path());
        while let Some(cur) = p {
            let md = fs::symlink_metadata(cur).unwrap();
            assert!(md.uid() == 0 && md.mode() & 0o022 == 0, "{} must be root-owned, not writable", cur.display());
            p = cur.parent();
        }

        let pid = std::process::id();
        let secret = format!("IG-TOP-SECRET-{pid}");
        let inputs = tempfile::tempdir().unwrap();
        let i = inputs.path();
        chmod(i, 0o755);
        fs::copy(probe(), i.join("probe")).unwrap();
        chmod(&i.join("probe"), 0o755);
        write(&i.join("secret.txt"), &format!("{secret}\n"), 0o600);
        fs::create_dir(i.join("secret-dir")).unwrap();
        write(&i.join("secret-dir/inner"), &format!("{secret}\n"), 0o644);
        symlink("/etc/hostname", i.join("secret-dir/link")).unwrap();
        chmod(&i.join("secret-dir"), 0o700);
        write(&i.join("readable.txt"), "anyone may read this\n", 0o644);
        write(&i.join("victim.json"), "precious\n", 0o644);
        write(&i.join("secret.toml"), &format!("allowed_group = \"{secret}\"\n"), 0o600);
        // A config that would let the caller do more: only root may pick it.
        let other = format!("allowed_group = \"{}\"\n\n[max]\nmemory = \"64G\"\npids = 100000\n", caller.name);
        write(&i.join("other.toml"), &other, 0o644);
        // The evil library (a constructor that announces itself) and programs named like real ones.
        fs::create_dir(i.join("evil")).unwrap();
        chmod(&i.join("evil"), 0o755);
        write(
            &i.join("evil/evil.c"),
            "#include <unistd.h>\n__attribute__((constructor)) static void pwn(void) {\n\
             (void)!write(1, \"PWNED\\n\", 6);\n(void)!write(2, \"PWNED\\n\", 6);\n}\n",
            0o644,
        );
        let evil_so_built = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(i.join("evil/evil.so"))
            .arg(i.join("evil/evil.c"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if evil_so_built {
            chmod(&i.join("evil/evil.so"), 0o755);
        } else {
            eprintln!("hostile: no C compiler: LD_PRELOAD is tested with a library that does not exist");
        }
        fs::create_dir(i.join("evil-bin")).unwrap();
        chmod(&i.join("evil-bin"), 0o755);
        for name in ["true", "sh", "echo"] {
            write(&i.join("evil-bin").join(name), "#!/bin/sh\necho PWNED\n", 0o755);
        }

        let work = tempfile::tempdir().unwrap();
        chown(work.path(), Some(caller.uid), Some(caller.gid)).unwrap();
        chmod(work.path(), 0o755);
        let sticky = tempfile::tempdir().unwrap();
        chmod(sticky.path(), 0o1777);
        write(&sticky.path().join("victim.json"), "precious\n", 0o644);

        let shadow_first_line = fs::read_to_string("/etc/shadow").unwrap().lines().next().unwrap().to_string();
        assert!(shadow_first_line.starts_with("root:"), "unexpected /etc/shadow");
        system.must_not_exist = vec![etc_report(), etc_dangling()];
        for p in &system.must_not_exist {
            assert!(!p.exists(), "{} exists before the test", p.display());
        }
        Fixture {
            caller,
            outsider,
            setuid_bin,
            inputs,
            work,
            sticky,
            secret,
            shadow_first_line,
            evil_so_built,
            _setuid_dir: setuid_dir,
            _system: system,
        }
    }

    fn input(&self, name: &str) -> String {
        path_str(&self.inputs.path().join(name))
    }

    fn in_work(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// Something the caller planted in their own directory: owned by them.
    fn plant_symlink(&self, link: &Path, to: &str) {
        let _ = fs::remove_file(link);
        symlink(to, link).unwrap();
        lchown(link, Some(self.caller.uid), Some(self.caller.gid)).unwrap();
    }

    /// `isolate-grade <argv>` as `who`, reaching the helper `via`. `env` is set in the helper's
    /// own environment only (for `Setuid`: after `setpriv`, by `env`, so no root process but the
    /// setuid helper ever sees it).
    fn helper(&self, via: Via, who: &Ids, argv: &[&str], env: &[(&str, &str)]) -> Out {
        let mut cmd = match via {
            Via::Root | Via::Sudo => {
                let mut c = Command::new(bin());
                scrub(&mut c);
                if via == Via::Sudo {
                    c.env("SUDO_UID", who.uid.to_string()).env("SUDO_GID", who.gid.to_string());
                }
                c.envs(env.iter().copied());
                c
            }
            Via::Setuid => {
                let mut c = Command::new("setpriv");
                scrub(&mut c);
                c.arg(format!("--reuid={}", who.uid))
                    .arg(format!("--regid={}", who.gid))
                    .args(["--init-groups", "--", "env"])
                    .args(env.iter().map(|(k, v)| format!("{k}={v}")))
                    .arg(&self.setuid_bin);
                c
            }
        };
        cmd.args(argv).current_dir(self.work.path()).stdin(Stdio::null());
        let out = cmd.output().expect("start the helper");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `isolate-grade run <args> -- <program>`.
    fn run(&self, via: Via, who: &Ids, args: &[&str], program: &[&str], env: &[(&str, &str)]) -> Out {
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        argv.push("--");
        argv.extend_from_slice(program);
        self.helper(via, who, &argv, env)
    }

    /// The probe, bound at /probe, with `args` (limits within the maxima are added).
    fn run_probe(&self, via: Via, args: &[&str], probe_args: &[&str], env: &[(&str, &str)]) -> (Out, Value) {
        let bind = format!("{}:/probe", self.input("probe"));
        let mut all = vec!["--bind", bind.as_str()];
        all.extend(ok_limits(args));
        let mut program = vec!["/probe"];
        program.extend_from_slice(probe_args);
        let out = self.run(via, &self.caller, &all, &program, env);
        let seen =
            serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{via:?}: probe output: {e}\n{out:#?}"));
        (out, seen)
    }

    /// The shadow file or the secret must never reach the output.
    #[track_caller]
    fn assert_nothing_leaked(&self, out: &Out, what: &str) {
        for text in [&out.stdout, &out.stderr] {
            assert!(!text.contains(&self.shadow_first_line), "{what}: /etc/shadow leaked\n{out:#?}");
            assert!(!text.lines().any(|l| l.starts_with("root:")), "{what}: /etc/shadow leaked\n{out:#?}");
            assert!(!text.contains(&self.secret), "{what}: the secret leaked\n{out:#?}");
        }
    }
}

/// Nothing of the test's own environment that could steer the helper.
fn scrub(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("ISOLATE_GRADE_") || k.starts_with("SUDO_") || k.starts_with("LD_") {
            c.env_remove(&*k);
        }
    }
}

/// `args` plus limits within the maxima for whichever of --memory and --pids it lacks.
fn ok_limits<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    for (flag, ok) in [("--memory", OK_MEMORY), ("--pids", OK_PIDS)] {
        if !args.iter().any(|a| a.starts_with(flag)) {
            all.push(ok);
        }
    }
    all
}

/// Refused as bad input: exit 2, every needle on stderr, the program never ran.
#[track_caller]
fn assert_refused(out: &Out, needles: &[&str], what: &str) {
    assert_eq!(out.code, 2, "{what}: expected exit 2 (refused)\n{out:#?}");
    for n in needles {
        assert!(out.stderr.contains(n), "{what}: stderr lacks {n:?}\n{out:#?}");
    }
    assert!(!out.stdout.contains(RAN), "{what}: the program ran\n{out:#?}");
    assert!(!out.stdout.contains("\"schema\""), "{what}: a report was printed\n{out:#?}");
}

#[track_caller]
fn assert_absent(p: &Path, what: &str) {
    assert!(p.symlink_metadata().is_err(), "{what}: {} was created", p.display());
}

/// No report in `p`: a refused request creates no file at all (see
/// [`bug_a_refused_bind_still_creates_or_truncates_the_report`]).
#[track_caller]
fn assert_no_report_written(p: &Path, what: &str) {
    match fs::read(p) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Ok(_) => panic!("{what}: a report file was created at {}", p.display()),
        Err(e) => panic!("{}: {e}", p.display()),
    }
}

fn etc_report() -> PathBuf {
    PathBuf::from(format!("/etc/isolate-grade-test-{}-report.json", std::process::id()))
}

fn etc_dangling() -> PathBuf {
    PathBuf::from(format!("/etc/isolate-grade-test-{}-dangling.json", std::process::id()))
}

fn ids(name: &'static str) -> Option<Ids> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| Ids { name, uid: u.uid.as_raw(), gid: u.gid.as_raw() })
}

fn group_gid(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw())
}

fn groups_of(who: &Ids) -> Vec<u32> {
    let name = CString::new(who.name).unwrap();
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(who.gid))
        .unwrap()
        .into_iter()
        .map(|g| g.as_raw())
        .collect()
}

fn sh(c: &mut Command) {
    let st = c.status().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(st.success(), "{c:?}: {st}");
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn write(p: &Path, text: &str, mode: u32) {
    fs::write(p, text).unwrap();
    chmod(p, mode);
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 temporary paths").to_string()
}

fn read_json(p: &Path) -> Value {
    let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", p.display()))
}

/// The probe's verdict on one of its checks.
fn check_ok(seen: &Value, kind: &str, path: &str) -> bool {
    seen["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["path"] == path)
        .unwrap_or_else(|| panic!("no {kind} check of {path}: {seen}"))["ok"]
        .as_bool()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------------

#[test]
fn untrusted_callers_get_nothing_they_could_not_do_themselves() {
    let Some(_serial) = root_serial() else { return };
    let fx = Fixture::new();
    // First that it works at all, so every refusal below is a refusal of that input alone.
    successful_runs_use_the_slot_uid_and_give_the_report_to_the_caller(&fx);
    callers_outside_the_allowed_group_are_refused(&fx);
    root_only_files_and_directories_cannot_be_bound(&fx);
    relative_and_dot_dot_paths_are_refused(&fx);
    symlinks_do_not_lead_out(&fx);
    the_report_goes_only_where_the_caller_may_write(&fx);
    only_root_chooses_the_config(&fx);
    limits_stay_within_the_system_maximum(&fx);
    a_hostile_environment_does_not_reach_the_helper_or_the_program(&fx);
    an_insecure_config_refuses_untrusted_callers(&fx);
    a_running_box_cannot_be_taken_over(&fx);
    batch_grading_runs_as_the_caller(&fx);
}

/// `isolate-grade ASSIGNMENT` needs no privilege and keeps none: through sudo or setuid it
/// becomes the caller before anything else, so the Python it starts (nbgrader's) and every
/// file it writes are the caller's. A fake "python" records the ids it runs with.
fn batch_grading_runs_as_the_caller(fx: &Fixture) {
    let course = fx.in_work("course");
    let record = fx.in_work("python-ids.txt");
    let python = fx.inputs.path().join("fake-python");
    write(
        &python,
        &format!(
            "#!/bin/sh\necho \"$(id -u) $(id -ru) $(id -g)\" >> {}\n\
             echo '{{\"executable\": \"/usr/bin/python3\", \"prefix\": \"/usr\", \"has_module\": true}}'\n",
            path_str(&record)
        ),
        0o755,
    );
    for via in UNTRUSTED {
        let _ = fs::remove_dir_all(&course);
        let _ = fs::remove_file(&record);
        fs::create_dir_all(course.join("submitted/alice/ps1")).unwrap();
        Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", fx.caller.uid, fx.caller.gid))
            .arg(&course)
            .status()
            .unwrap();
        let argv = ["ps1", "--course", &path_str(&course), "--python", &path_str(&python), "--jobs", "1"];
        let out = fx.helper(via, &fx.caller, &argv, &[]);
        // It stops when the fake Python can't grade (or, under sudo, when `sudo -n` is missing
        // here), but not before the Python ran as the caller.
        assert_ne!(out.code, 0, "{via:?}: {out:#?}");
        let ids = fs::read_to_string(&record).unwrap_or_else(|e| panic!("{via:?}: python never ran: {e}\n{out:#?}"));
        let want = format!("{} {} {}", fx.caller.uid, fx.caller.uid, fx.caller.gid);
        for line in ids.lines() {
            assert_eq!(line, want, "{via:?}: the Python ran with other ids\n{out:#?}");
        }
        if let Ok(md) = fs::metadata(course.join(".isolate-grade")) {
            assert_eq!(md.uid(), fx.caller.uid, "{via:?}: state created as another user");
        }
    }
}

/// Case 10: the caller's run works both ways, as the slot's own uid, and they own the report.
fn successful_runs_use_the_slot_uid_and_give_the_report_to_the_caller(fx: &Fixture) {
    for via in UNTRUSTED {
        let report = fx.in_work(&format!("ok-{via:?}.json"));
        let _ = fs::remove_file(&report);
        let r = path_str(&report);
        let (out, seen) = fx.run_probe(via, &["--report", &r], &[], &[]);
        assert_eq!(out.code, 0, "{via:?}: {out:#?}");
        let rep = read_json(&report);
        assert_eq!(rep["status"], "ok", "{via:?}: {rep}");
        let uid = rep["sandbox"]["uid"].as_u64().unwrap();
        assert!(uid >= 60000, "{via:?}: slot uid {uid}, not root's nor the caller's");
        assert_ne!(uid, u64::from(fx.caller.uid), "{via:?}: ran as the caller");
        assert_eq!(seen["uid"], json!([uid, uid, uid]), "{via:?}");
        assert_eq!(seen["gid"], json!([uid, uid, uid]), "{via:?}");
        assert_eq!(seen["groups"], json!([]), "{via:?}: the caller's groups leaked in");
        assert_eq!(rep["limits"]["memory"], 256u64 << 20, "{via:?}");
        assert_eq!(rep["limits"]["pids"], 32, "{via:?}");
        let md = fs::metadata(&report).unwrap();
        assert_eq!((md.uid(), md.gid()), (fx.caller.uid, fx.caller.gid), "{via:?}: report owner");
        assert_eq!(md.mode() & 0o022, 0, "{via:?}: report writable by others");
        assert!(processes_of_uid(uid as u32).is_empty(), "{via:?}: processes left behind");
    }
}

/// The cgroup directories of process `pid`, from `/proc/PID/cgroup` and the mount points of
/// this host's hierarchies.
fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let h = isolate_grade::cgroup::Hierarchies::read(Path::new("/proc/self/mountinfo")).unwrap();
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            let mount = match controllers {
                "" => h.v2.clone()?,
                c => c.split(',').find_map(|c| h.v1.get(c).cloned())?,
            };
            Some(mount.join(path.trim_start_matches('/')))
        })
        .filter(|d| d.is_dir())
        .collect()
}

/// Case 13: a box the caller started through the setuid helper keeps running while others try
/// to take it over. Another user, with the box's slot and pids in hand, can't signal its
/// processes (they run as the slot's uid), write its cgroup's limits or membership, or open its
/// slot lock; a second run by the caller gets another slot and uid. The box then ends `ok`.
fn a_running_box_cannot_be_taken_over(fx: &Fixture) {
    use std::io::{BufRead, BufReader, Read, Write};
    let marker = format!("IG-BOX-{}", std::process::id());
    let script = format!("echo started; read _; echo alive; : {marker}");
    let mut c = Command::new("setpriv");
    scrub(&mut c);
    c.arg(format!("--reuid={}", fx.caller.uid))
        .arg(format!("--regid={}", fx.caller.gid))
        .args(["--init-groups", "--"])
        .arg(&fx.setuid_bin)
        .args(["run", "--report", "-", OK_MEMORY, OK_PIDS, "--", "/bin/sh", "-c", &script])
        .current_dir(fx.work.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut boxed = c.spawn().expect("start the box");
    let mut stdout = BufReader::new(boxed.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "started\n", "the box did not start");
    let pids: Vec<u32> = (60000..60064)
        .flat_map(processes_of_uid)
        .filter(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker)))
        .collect();
    // its init and its shell
    assert!(!pids.is_empty(), "the box's processes");
    let uid = fs::metadata(format!("/proc/{}", pids[0])).unwrap().uid();
    let slot = uid - 60000;
    // Every file of the box's cgroups, found from its processes (v1 or v2, wherever the
    // config's cgroup_root puts them).
    let mut files: Vec<String> = pids
        .iter()
        .flat_map(|p| cgroup_dirs(*p))
        .filter(|d| d.ends_with(format!("slot-{slot}")))
        .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()))
        .filter(|p| p.is_file())
        .map(|p| path_str(&p))
        .collect();
    files.sort();
    files.dedup();
    assert!(!files.is_empty(), "no cgroup files for slot {slot}");
    let lock = format!("/run/isolate-grade/slot-{slot}.lock");
    let attack = format!(
        "for p in {pids}; do kill -STOP $p 2>/dev/null && echo TOOK stopped $p; kill -9 $p 2>/dev/null && echo TOOK killed $p; done
         for f in {files}; do (echo 1 > $f) 2>/dev/null && echo TOOK wrote $f; done
         (exec 3<>{lock}) 2>/dev/null && echo TOOK opened {lock}
         echo tried",
        pids = pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" "),
        files = files.join(" "),
    );
    let other = Command::new("setpriv")
        .arg(format!("--reuid={}", fx.outsider.uid))
        .arg(format!("--regid={}", fx.outsider.gid))
        .args(["--init-groups", "--", "/bin/sh", "-c", &attack])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&other.stdout);
    // and a second run of the caller's own, meanwhile: another slot, another uid
    let second = fx.run(Via::Setuid, &fx.caller, &ok_limits(&["--report", "-"]), &["/usr/bin/id", "-u"], &[]);
    boxed.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    boxed.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = boxed.wait().unwrap();
    assert_eq!(said.trim(), "tried", "another user took over the box:\n{said}");
    assert_eq!(second.code, 0, "{second:#?}");
    assert_ne!(second.stdout.lines().next(), Some(uid.to_string().as_str()), "a second run shared the box's uid");
    assert!(rest.starts_with("alive\n"), "the box did not survive: {rest}\n{stderr}");
    assert_eq!(status.code(), Some(0), "{rest}\n{stderr}");
}

/// Case 1: not in `allowed_group`: refused, and the message names the group.
fn callers_outside_the_allowed_group_are_refused(fx: &Fixture) {
    for via in UNTRUSTED {
        let report = fx.sticky.path().join(format!("outsider-{via:?}.json"));
        let r = path_str(&report);
        let out = fx.run(via, &fx.outsider, &ok_limits(&["--report", &r]), ECHO, &[]);
        let who = format!("uid {} may not use isolate-grade", fx.outsider.uid);
        assert_refused(&out, &[&who, "not a member of group \"isolate-grade-test\""], &format!("{via:?} outsider"));
        assert_absent(&report, &format!("{via:?} outsider"));
    }
}

/// Case 2: what the caller cannot read cannot be bound (file, directory, policy file, writable
/// bind of a read-only file), while trusted root can bind it.
fn root_only_files_and_directories_cannot_be_bound(fx: &Fixture) {
    let secret = fx.input("secret.txt");
    let secret_dir = fx.input("secret-dir");
    let readable = fx.input("readable.txt");
    // The caller's own policy, naming the secret as a bind.
    let default = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.toml")).unwrap();
    let policy = fx.in_work("binds-secret.toml");
    write(&policy, &format!("{default}\n[[bind]]\nsource = \"{secret}\"\ntarget = \"/s\"\n"), 0o644);
    lchown(&policy, Some(fx.caller.uid), Some(fx.caller.gid)).unwrap();
    let policy = path_str(&policy);
    let secret_policy = fx.input("secret.toml");
    for via in UNTRUSTED {
        let report = fx.in_work(&format!("bind-{via:?}.json"));
        let r = path_str(&report);
        for (args, needles) in [
            (vec!["--bind".to_string(), format!("{secret}:/secret")], vec![secret.as_str(), "bind source", "EACCES"]),
            (
                vec!["--bind".to_string(), format!("{secret_dir}:/d")],
                vec![secret_dir.as_str(), "bind source", "EACCES"],
            ),
            (
                vec!["--bind".to_string(), format!("{readable}:/r:rw")],
                vec![readable.as_str(), "writable bind source", "EACCES"],
            ),
            (vec!["--policy".to_string(), policy.clone()], vec![secret.as_str(), "bind source", "EACCES"]),
            (vec!["--policy".to_string(), secret_policy.clone()], vec![secret_policy.as_str(), "Permission denied"]),
        ] {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(["--report", &r]);
            let what = format!("{via:?} {args:?}");
            let out = fx.run(via, &fx.caller, &ok_limits(&a), ECHO, &[]);
            assert_refused(&out, &needles, &what);
            fx.assert_nothing_leaked(&out, &what);
            assert_no_report_written(&report, &what);
            let _ = fs::remove_file(&report);
        }
    }
    // Root is trusted: the same file and directory are bound (the sandbox uid still cannot read
    // them: the program runs unprivileged).
    let (b1, b2) = (format!("{secret}:/secret"), format!("{secret_dir}:/secret-dir"));
    let out = fx.run(
        Via::Root,
        &fx.caller,
        &ok_limits(&["--bind", &b1, "--bind", &b2]),
        &[
            "/bin/sh",
            "-c",
            "test -f /secret && test -d /secret-dir && echo BOUND; cat /secret /secret-dir/inner; exit 0",
        ],
        &[],
    );
    assert_eq!(out.code, 0, "root binds: {out:#?}");
    assert!(out.stdout.contains("BOUND"), "root binds: {out:#?}");
    fx.assert_nothing_leaked(&out, "root binds, read by the sandbox uid");
}

/// Case 3: bind paths are absolute and free of `..` (and `.`, empty) components.
fn relative_and_dot_dot_paths_are_refused(fx: &Fixture) {
    fs::create_dir_all(fx.in_work("etc")).unwrap(); // a relative "etc" would resolve to this
    let inputs = fx.input("readable.txt");
    let dotdot = "must not contain empty, '.' or '..' components";
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (vec!["--bind".into(), "/tmp/x/../../etc:/e".into()], vec!["--bind /tmp/x/../../etc:/e", "source", dotdot]),
        (vec!["--bind".into(), "/etc/../etc/shadow:/s".into()], vec!["source", dotdot]),
        (vec!["--bind".into(), "/etc/./shadow:/s".into()], vec!["source", dotdot]),
        (vec!["--bind".into(), format!("{inputs}:/tmp/../etc/x")], vec!["target", dotdot]),
        (vec!["--bind".into(), "etc:/e".into()], vec!["--bind etc:/e", "\"etc\" is not an absolute path"]),
        (vec!["--bind".into(), "./etc:/e".into()], vec!["is not an absolute path"]),
        (vec!["--bind".into(), format!("{inputs}:r")], vec!["target", "is not an absolute path"]),
        (vec!["--workdir".into(), "/tmp/../etc".into()], vec!["--workdir", dotdot]),
    ];
    for via in UNTRUSTED {
        for (args, needles) in &cases {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = fx.run(via, &fx.caller, &ok_limits(&a), ECHO, &[]);
            assert_refused(&out, needles, &format!("{via:?} {args:?}"));
        }
    }
}

/// Case 4: a symlink is never followed to its host target: as a bind source it is refused; in
/// a bound directory (or copied by the caller's policy) it resolves inside the sandbox, where
/// the secrets are not.
fn symlinks_do_not_lead_out(fx: &Fixture) {
    let secret = fx.input("secret.txt");
    let shadow_link = fx.in_work("shadow-link");
    let secret_link = fx.in_work("secret-link");
    fx.plant_symlink(&shadow_link, "/etc/shadow");
    fx.plant_symlink(&secret_link, &secret);
    let dir = fx.in_work("linkdir");
    fs::create_dir_all(&dir).unwrap();
    chown(&dir, Some(fx.caller.uid), Some(fx.caller.gid)).unwrap();
    chmod(&dir, 0o755);
    let up = format!("{}etc/shadow", "../".repeat(12));
    for (name, to) in [
        ("shadow", "/etc/shadow"),
        ("up", up.as_str()),
        ("proc1", "/proc/1/root/etc/shadow"),
        ("self", "/proc/self/root/etc/shadow"),
        ("secret", secret.as_str()),
    ] {
        fx.plant_symlink(&dir.join(name), to);
    }
    let default = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.toml")).unwrap();
    let copy_policy = fx.in_work("copies-link.toml");
    let sl = path_str(&shadow_link);
    write(
        &copy_policy,
        &format!("{default}\n[[bind]]\nsource = \"{sl}\"\ntarget = \"/s\"\nsymlink = \"copy\"\n"),
        0o644,
    );
    lchown(&copy_policy, Some(fx.caller.uid), Some(fx.caller.gid)).unwrap();
    let copy_policy = path_str(&copy_policy);

    for via in UNTRUSTED {
        for link in [&shadow_link, &secret_link] {
            let l = path_str(link);
            let bind = format!("{l}:/s");
            let out = fx.run(via, &fx.caller, &ok_limits(&["--bind", &bind]), ECHO, &[]);
            let what = format!("{via:?} bind {l}");
            assert_refused(&out, &[&l, "is a symlink"], &what);
            fx.assert_nothing_leaked(&out, &what);
        }
        let bind = format!("{}:/d", path_str(&dir));
        let names = ["shadow", "up", "proc1", "self", "secret"];
        let mut probe_args = vec!["--exists", "/d/shadow"];
        let paths: Vec<String> = names.iter().map(|n| format!("/d/{n}")).collect();
        for p in &paths {
            probe_args.extend(["--try-read", p.as_str()]);
        }
        probe_args.extend(["--try-read", "/etc/shadow"]);
        let (out, seen) = fx.run_probe(via, &["--bind", &bind], &probe_args, &[]);
        assert_eq!(out.code, 0, "{via:?}: {out:#?}");
        assert!(check_ok(&seen, "exists", "/d/shadow"), "{via:?}: the link itself is there: {seen}");
        for p in paths.iter().map(String::as_str).chain(["/etc/shadow"]) {
            assert!(!check_ok(&seen, "read", p), "{via:?}: {p} is readable in the sandbox: {seen}");
        }
        fx.assert_nothing_leaked(&out, &format!("{via:?} bound directory of links"));
        // The caller's policy may copy the link itself: it points into the sandbox.
        let out = fx.run(
            via,
            &fx.caller,
            &ok_limits(&["--policy", &copy_policy]),
            &["/bin/sh", "-c", "test -L /s && echo LINK; cat /s; echo DONE"],
            &[],
        );
        assert_eq!(out.code, 0, "{via:?} copied link: {out:#?}");
        assert!(out.stdout.contains("LINK") && out.stdout.contains("DONE"), "{via:?}: {out:#?}");
        fx.assert_nothing_leaked(&out, &format!("{via:?} copied link"));
        // --link (how a kernelspec recreates a venv's symlinks) is the same copy, from the
        // command line: the link itself, read as the caller, pointing at nothing inside ...
        let script = format!("test -L {sl} && echo LINK; cat {sl}; echo DONE");
        let out = fx.run(via, &fx.caller, &ok_limits(&["--link", &sl]), &["/bin/sh", "-c", &script], &[]);
        assert_eq!(out.code, 0, "{via:?} --link: {out:#?}");
        assert!(out.stdout.contains("LINK") && out.stdout.contains("DONE"), "{via:?}: {out:#?}");
        fx.assert_nothing_leaked(&out, &format!("{via:?} --link"));
        // ... and a link the caller can't reach (in a root-only directory) is refused
        let hidden = format!("{}/link", fx.input("secret-dir"));
        let out = fx.run(via, &fx.caller, &ok_limits(&["--link", &hidden]), ECHO, &[]);
        assert_refused(&out, &[&hidden, "EACCES"], &format!("{via:?} --link in a root-only directory"));
        fx.assert_nothing_leaked(&out, &format!("{via:?} --link in a root-only directory"));
    }
}

/// Case 5: the report is opened as the caller, without following symlinks: not in a root-owned
/// directory, not over a root-owned file in a sticky directory, not through a planted symlink.
fn the_report_goes_only_where_the_caller_may_write(fx: &Fixture) {
    let etc_report = etc_report();
    let in_sticky = fx.sticky.path().join("victim.json");
    let root_file = fx.inputs.path().join("victim.json");
    for via in UNTRUSTED {
        let what = |s: &str| format!("{via:?} --report {s}");
        // A root-owned directory the caller cannot write.
        let r = path_str(&etc_report);
        let out = fx.run(via, &fx.caller, &ok_limits(&["--report", &r]), ECHO, &[]);
        assert_refused(&out, &[&r, "the report file", "EACCES"], &what(&r));
        assert_absent(&etc_report, &what(&r));
        // A root-owned file in a world-writable sticky directory.
        let r = path_str(&in_sticky);
        let out = fx.run(via, &fx.caller, &ok_limits(&["--report", &r]), ECHO, &[]);
        assert_refused(&out, &[&r, "the report file", "EACCES"], &what(&r));
        assert_eq!(fs::read_to_string(&in_sticky).unwrap(), "precious\n", "{}", what(&r));
        assert_eq!(fs::metadata(&in_sticky).unwrap().uid(), 0);
        // Symlinks the caller planted, in their own directory and in the sticky one: to a
        // root-owned file, and dangling into /etc (following it would create the target).
        let planted = [
            (fx.in_work(&format!("report-link-{via:?}")), path_str(&root_file)),
            (fx.sticky.path().join(format!("report-link-{via:?}")), path_str(&root_file)),
            (fx.sticky.path().join(format!("dangling-{via:?}")), path_str(&etc_dangling())),
        ];
        for (link, to) in &planted {
            fx.plant_symlink(link, to);
            let r = path_str(link);
            let out = fx.run(via, &fx.caller, &ok_limits(&["--report", &r]), ECHO, &[]);
            assert_refused(&out, &[&r, "the report file", "ELOOP"], &what(&r));
            assert!(fs::symlink_metadata(link).unwrap().file_type().is_symlink(), "{}", what(&r));
        }
        assert_eq!(fs::read_to_string(&root_file).unwrap(), "precious\n", "{via:?}: symlink target changed");
        assert_absent(&etc_dangling(), &what("dangling symlink"));
    }
}

/// Case 6: `--config` and `ISOLATE_GRADE_CONFIG` are root's alone.
fn only_root_chooses_the_config(fx: &Fixture) {
    let other = fx.input("other.toml");
    let needle = "only root may choose another system config";
    for via in UNTRUSTED {
        let out = fx.run(via, &fx.caller, &["--config", &other, "--memory=1G", OK_PIDS], ECHO, &[]);
        assert_refused(&out, &[needle], &format!("{via:?} --config"));
        let out = fx.run(via, &fx.caller, &["--memory=1G", OK_PIDS], ECHO, &[("ISOLATE_GRADE_CONFIG", &other)]);
        assert_refused(&out, &[needle], &format!("{via:?} ISOLATE_GRADE_CONFIG"));
        // also a global option before the subcommand
        let out =
            fx.helper(via, &fx.caller, &["--config", &other, "run", "--memory=1G", OK_PIDS, "--", ECHO[0], RAN], &[]);
        assert_refused(&out, &[needle], &format!("{via:?} --config before run"));
    }
    // Root may: and that config really allows 1G, so the refusals above were about the caller.
    let out = fx.run(Via::Root, &fx.caller, &["--config", &other, "--memory=1G", OK_PIDS], ECHO, &[]);
    assert_eq!(out.code, 0, "root --config: {out:#?}");
    assert!(out.stdout.contains(RAN));
}

/// Case 7: limits above the system maximum, and values that are no limit at all, are refused;
/// a repeated flag cannot sneak a larger value past the check.
fn limits_stay_within_the_system_maximum(fx: &Fixture) {
    let over = "exceeds the system maximum";
    let cases: &[(&[&str], &[&str])] = &[
        (&["--memory=1G"], &["memory 1G exceeds the system maximum 512M (/etc/isolate-grade/config.toml)"]),
        (&["--memory", "513M"], &["memory 513M", over]),
        (&["--pids", "1000"], &["pids 1000 exceeds the system maximum 64"]),
        (&["--pids=65"], &["pids 65", over]),
        (&["--cpu-time=25h"], &["cpu_time", over]),
        (&["--wall-time=25h"], &["wall_time", over]),
        (&["--tmp-size=17G"], &["tmp_size", over]),
        (&["--cpu-quota=65"], &["cpu_quota", over]),
        (&["--cpu-quota=1e3"], &["cpu_quota", over]),
        (&["--memory=0"], &["--memory: must be greater than zero"]),
        (&["--memory=0G"], &["--memory: must be greater than zero"]),
        (&["--memory=0.5"], &["--memory: must be greater than zero"]),
        (&["--memory=3M"], &["--memory: must be at least 4M"]),
        (&["--memory=-1G"], &["--memory: must not be negative"]),
        (&["--memory", "-1G"], &["unexpected argument '-1'"]), // clap: not a value
        (&["--memory=99999999999T"], &["--memory: too large"]),
        (&["--memory=99999999999999999999999"], &["--memory: too large"]),
        (&["--memory=lots"], &["--memory: not a number"]),
        (&["--memory=1Q"], &["--memory: unknown unit"]),
        (&["--memory=1.2.3M"], &["--memory: not a number"]),
        (&["--memory="], &["--memory: empty value"]),
        (&["--pids=0"], &["--pids: must be greater than zero"]),
        (&["--pids=-5"], &["--pids: must not be negative"]),
        (&["--pids=1.5"], &["--pids: not a number"]),
        (&["--pids=10k"], &["--pids: not a number"]),
        (&["--pids=99999999999999999999"], &["--pids: too large"]),
        (&["--cpu-time=0"], &["--cpu-time: must be greater than zero"]),
        (&["--wall-time=100000h"], &["--wall-time: too large"]),
        (&["--wall-time=1d"], &["--wall-time: unknown unit"]),
        (&["--tmp-size=0"], &["--tmp-size: must be greater than zero"]),
        (&["--cpu-quota=0"], &["--cpu-quota: must be between"]),
        (&["--cpu-quota=NaN"], &["--cpu-quota: must be between"]),
        (&["--cpu-quota=inf"], &["--cpu-quota: must be between"]),
        (&["--cpu-quota=-1"], &["--cpu-quota: must be between"]),
        (&["--cpu-quota=half"], &["--cpu-quota: not a number"]),
    ];
    // Repeated: clap refuses, or the last one wins and is checked against the maximum.
    let repeated: &[&[&str]] = &[&["--memory", "100M", "--memory", "2G"], &["--pids", "8", "--pids", "1000"]];
    for via in UNTRUSTED {
        for (args, needles) in cases {
            let out = fx.run(via, &fx.caller, &ok_limits(args), ECHO, &[]);
            assert_refused(&out, needles, &format!("{via:?} {args:?}"));
        }
        for args in repeated {
            let out = fx.run(via, &fx.caller, &ok_limits(args), ECHO, &[]);
            let what = format!("{via:?} {args:?}");
            assert_refused(&out, &[], &what);
            assert!(
                out.stderr.contains("cannot be used multiple times") || out.stderr.contains(over),
                "{what}: {out:#?}"
            );
        }
        // No flags: the default policy's own 1G is above this host's maximum.
        let out = fx.run(via, &fx.caller, &[], ECHO, &[]);
        assert_refused(&out, &["memory 1G", over], &format!("{via:?} the default policy's limits"));
        // The environment twins are checked like the flags.
        let out = fx.run(via, &fx.caller, &[OK_PIDS], ECHO, &[("ISOLATE_GRADE_MEMORY", "2G")]);
        assert_refused(&out, &["memory 2G", over], &format!("{via:?} ISOLATE_GRADE_MEMORY=2G"));
        let out = fx.run(via, &fx.caller, &[OK_MEMORY], ECHO, &[("ISOLATE_GRADE_PIDS", "1000")]);
        assert_refused(&out, &["pids 1000", over], &format!("{via:?} ISOLATE_GRADE_PIDS=1000"));
        // Repeated the other way round: if accepted at all, what runs is within the maximum.
        let report = fx.in_work(&format!("repeated-{via:?}.json"));
        let r = path_str(&report);
        let out = fx.run(via, &fx.caller, &["--memory", "2G", "--memory", "100M", OK_PIDS, "--report", &r], ECHO, &[]);
        if out.code == 2 {
            assert_refused(&out, &["cannot be used multiple times"], &format!("{via:?} repeated --memory"));
        } else {
            assert_eq!(out.code, 0, "{via:?} repeated --memory: {out:#?}");
            assert!(read_json(&report)["limits"]["memory"].as_u64().unwrap() <= 512 << 20);
        }
        // The maxima themselves are allowed.
        let out = fx.run(via, &fx.caller, &["--memory=512M", "--pids=64"], ECHO, &[]);
        assert_eq!(out.code, 0, "{via:?} at the maxima: {out:#?}");
        assert!(out.stdout.contains(RAN));
    }
}

/// Case 8: LD_PRELOAD, LD_LIBRARY_PATH and PATH planted by the caller: the helper is not
/// affected, and the program's environment is the policy's, nothing of the caller's. The evil
/// library and programs are bound into the sandbox at the paths the variables name, so a leak
/// would show.
fn a_hostile_environment_does_not_reach_the_helper_or_the_program(fx: &Fixture) {
    let evil = format!("{}:/igtest-evil", fx.input("evil"));
    let evil_bin = format!("{}:/igtest-evil-bin", fx.input("evil-bin"));
    let hostile_path = format!("/igtest-evil-bin:{POLICY_PATH}");
    let env: &[(&str, &str)] = &[
        ("LD_PRELOAD", "/igtest-evil/evil.so"),
        ("LD_LIBRARY_PATH", "/igtest-evil"),
        ("PATH", &hostile_path),
        ("IGTEST_EVIL_MARKER", "1"),
        ("BASH_ENV", "/igtest-evil-bin/sh"),
        ("ENV", "/igtest-evil-bin/sh"),
    ];
    let binds = ["--bind", evil.as_str(), "--bind", evil_bin.as_str()];
    let pwned = |out: &Out| out.stdout.contains("PWNED") || out.stderr.contains("PWNED");
    for via in UNTRUSTED {
        for program in [&["/bin/true"][..], &["true"], &["sh", "-c", "echo ok"]] {
            let out = fx.run(via, &fx.caller, &ok_limits(&binds), program, env);
            assert_eq!(out.code, 0, "{via:?} {program:?}: {out:#?}");
            assert!(!pwned(&out), "{via:?} {program:?}: the caller's environment took effect: {out:#?}");
        }
        let (out, seen) = fx.run_probe(via, &binds, &[], env);
        assert_eq!(out.code, 0, "{via:?}: {out:#?}");
        let seen_env = seen["env"].as_object().unwrap();
        assert_eq!(seen_env["PATH"], POLICY_PATH, "{via:?}");
        for (k, _) in env.iter().filter(|(k, _)| *k != "PATH") {
            assert!(!seen_env.contains_key(*k), "{via:?}: {k} reached the program: {seen_env:?}");
        }
        for k in seen_env.keys() {
            assert!(!k.starts_with("SUDO_") && !k.starts_with("ISOLATE_GRADE_"), "{via:?}: {k} leaked: {seen_env:?}");
        }
        // Control: passed on purpose (--env), the same library does run, so its absence above
        // means something.
        if fx.evil_so_built {
            let mut a = ok_limits(&binds);
            a.extend(["--env", "LD_PRELOAD=/igtest-evil/evil.so"]);
            let out = fx.run(via, &fx.caller, &a, &["/bin/true"], env);
            assert_eq!(out.code, 0, "{via:?} control: {out:#?}");
            assert!(out.stdout.contains("PWNED"), "{via:?} control: the library never ran: {out:#?}");
        }
    }
    // The setuid helper itself ignores an LD_PRELOAD naming the library on the host (secure
    // execution). Through sudo this is sudo's job (it strips LD_*): a root caller who sets it
    // for the helper only attacks themselves, so it is not tested that way.
    if fx.evil_so_built {
        let host_so = format!("{}/evil.so", fx.input("evil"));
        let out = fx.run(Via::Setuid, &fx.caller, &ok_limits(&[]), &["/bin/true"], &[("LD_PRELOAD", &host_so)]);
        assert_eq!(out.code, 0, "setuid with LD_PRELOAD: {out:#?}");
        assert!(!pwned(&out), "the setuid helper loaded LD_PRELOAD: {out:#?}");
    }
}

/// Case 9: a config (or its directory) that someone besides root could have written decides
/// nothing for untrusted callers.
fn an_insecure_config_refuses_untrusted_callers(fx: &Fixture) {
    let config = Path::new(CONFIG);
    let dir = Path::new(CONFIG_DIR);
    let secure_copy = fx.inputs.path().join("config-copy.toml");
    let (caller_uid, caller_gid) = (fx.caller.uid, fx.caller.gid);
    type Change<'a> = Box<dyn Fn() + 'a>;
    let changes: Vec<(&str, &str, Change)> = vec![
        ("group-writable (0664)", CONFIG, Box::new(|| chmod(config, 0o664))),
        ("other-writable (0646)", CONFIG, Box::new(|| chmod(config, 0o646))),
        ("owned by the caller", CONFIG, Box::new(|| chown(config, Some(caller_uid), Some(caller_gid)).unwrap())),
        (
            "owned by the caller's group, 0664",
            CONFIG,
            Box::new(|| {
                chown(config, Some(0), Some(caller_gid)).unwrap();
                chmod(config, 0o664);
            }),
        ),
        ("its directory group-writable (0775)", CONFIG_DIR, Box::new(|| chmod(dir, 0o775))),
        (
            "a symlink to a secure copy",
            CONFIG,
            Box::new(|| {
                write(&secure_copy, CONFIG_TEXT, 0o644);
                fs::remove_file(config).unwrap();
                symlink(&secure_copy, config).unwrap();
            }),
        ),
    ];
    for (what, path, change) in &changes {
        change();
        for via in UNTRUSTED {
            let out = fx.run(via, &fx.caller, &ok_limits(&[]), ECHO, &[]);
            assert_refused(&out, &[&format!("{path} {INSECURE}")], &format!("{via:?}: config {what}"));
        }
        write_config();
    }
    // Root trusts its own config whatever its mode.
    chmod(config, 0o664);
    let out = fx.run(Via::Root, &fx.caller, &ok_limits(&[]), ECHO, &[]);
    assert_eq!(out.code, 0, "root, config 0664: {out:#?}");
    write_config();
    // Repaired: the caller is back in business.
    for via in UNTRUSTED {
        let out = fx.run(via, &fx.caller, &ok_limits(&[]), ECHO, &[]);
        assert_eq!(out.code, 0, "{via:?} after the repair: {out:#?}");
        assert!(out.stdout.contains(RAN));
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests for bugs this suite found in src/ (both fixed).
// ---------------------------------------------------------------------------------------------

/// run.rs used to open (create, truncate) the report before it opened the bind sources, so a
/// run refused for its binds (exit 2, "nothing ran, nothing written") still created an empty
/// report or wiped the caller's previous one.
#[test]
fn bug_a_refused_bind_still_creates_or_truncates_the_report() {
    let Some(_serial) = root_serial() else { return };
    let fx = Fixture::new();
    let secret = format!("{}:/s", fx.input("secret.txt"));
    for via in [Via::Root, Via::Sudo, Via::Setuid] {
        let previous = fx.in_work(&format!("previous-{via:?}.json"));
        write(&previous, "{\"the\": \"previous report\"}\n", 0o644);
        chown(&previous, Some(fx.caller.uid), Some(fx.caller.gid)).unwrap();
        let fresh = fx.in_work(&format!("fresh-{via:?}.json"));
        let mut cases = vec![(&previous, "/nonexistent/igtest:/s"), (&fresh, "/nonexistent/igtest:/s")];
        if via != Via::Root {
            // root may bind the secret; the caller may not
            cases.push((&previous, secret.as_str()));
        }
        for (report, bind) in cases {
            let r = path_str(report);
            let out = fx.run(via, &fx.caller, &ok_limits(&["--report", &r, "--bind", bind]), ECHO, &[]);
            assert_eq!(out.code, 2, "{via:?}: {out:#?}");
        }
        assert_eq!(
            fs::read_to_string(&previous).unwrap(),
            "{\"the\": \"previous report\"}\n",
            "{via:?}: a refused run truncated the previous report"
        );
        assert_absent(&fresh, &format!("{via:?}: a refused run created an empty report"));
    }
}

/// `check` loads `--config`/`ISOLATE_GRADE_CONFIG` as root for anyone: an untrusted caller
/// makes the setuid helper read a root-only file and print parts of it.
#[test]
fn bug_check_reads_any_file_as_root_for_untrusted_callers() {
    let Some(_serial) = root_serial() else { return };
    let fx = Fixture::new();
    let secret_toml = fx.input("secret.toml"); // root, 0600: allowed_group = "<secret>"
    for via in UNTRUSTED {
        let out = fx.helper(via, &fx.caller, &["check", "--config", &secret_toml], &[]);
        fx.assert_nothing_leaked(&out, &format!("{via:?} check --config"));
        let out = fx.helper(via, &fx.caller, &["check"], &[("ISOLATE_GRADE_CONFIG", &secret_toml)]);
        fx.assert_nothing_leaked(&out, &format!("{via:?} check with ISOLATE_GRADE_CONFIG"));
        let out = fx.helper(via, &fx.caller, &["check", "--config", "/etc/shadow"], &[]);
        assert!(!out.stdout.contains("/etc/shadow: line"), "{via:?}: check parsed /etc/shadow as root: {out:#?}");
    }
}
