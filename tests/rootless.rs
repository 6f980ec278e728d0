//! Rootless mode (issue #17), from outside.
//!
//! - What `isolate-grade check` says about the mode and about user namespaces for an
//!   unprivileged caller, in the places instructors' servers run: a plain host, a host or
//!   container whose `user.max_user_namespaces` is 0, a container-like `/proc` (read-only
//!   `/proc/sys`, as Docker leaves it), and a process under a seccomp filter that refuses user
//!   namespaces (isolate-grade's own sandbox, which kills the process that tries).
//! - `isolate-grade run` by that caller: the probe inside sees the same sandbox as privileged
//!   mode's (slot uid, no capability in any set, no_new_privs, seccomp, only `lo`, only the
//!   binds), the report says `rootless` and which limits were not enforced; the default policy
//!   (limits required) is refused, exit 3, naming the cgroup looked at and why it isn't
//!   delegated (also a chowned subtree on a host whose v2 has no controllers); the wall-clock limit and the end of everything in
//!   the sandbox hold; and as a hostile caller's tests would have it: the sandbox can't write
//!   the caller's files it was given read-only, can't see their others, can't signal their
//!   processes, can't reach a port they listen on, and can't make a user namespace of its own.
//!
//! Each environment is made by the test; the unprivileged caller is `nobody` with no
//! capabilities (`setpriv`).

mod common;
use common::{bin, probe, require_root, serial, test_config};
use serde_json::Value;
use std::process::Command;

/// `check --format json` run by `prefix` (a command line that ends by running it): its items
/// by name, (ok, detail).
fn check_items(prefix: &[&str]) -> std::collections::BTreeMap<String, (bool, String)> {
    let b = bin();
    let out = Command::new(prefix[0])
        .args(&prefix[1..])
        .args([b.to_str().unwrap(), "check", "--format", "json"])
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v: Value = serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or_else(|e| {
        panic!("check's JSON: {e}\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    });
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                (i["ok"].as_bool().unwrap(), i["detail"].as_str().unwrap().into()),
            )
        })
        .collect()
}

/// An unprivileged caller: nobody, no groups, no capabilities in any set.
const NOBODY: &[&str] =
    &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"];

#[test]
fn root_is_privileged_and_an_unprivileged_caller_is_rootless_with_a_usable_user_namespace() {
    if !require_root() {
        return;
    }
    let items = check_items(&["env"]);
    assert!(items["mode"].0 && items["mode"].1.starts_with("privileged:"), "{items:?}");
    let items = check_items(NOBODY);
    let (ok, mode) = &items["mode"];
    assert!(mode.starts_with("rootless: effective uid 65534 without CAP_SYS_ADMIN"), "{mode}");
    assert!(*ok && mode.contains("best-effort") && mode.contains("the batch all work rootless"), "{mode}");
    assert!(items["user-namespaces"].0, "{items:?}");
    assert!(items["userns-procfs"].1.contains("can be mounted"), "{items:?}");
    // where a run's cgroup would go: nowhere here (nobody owns no cgroup), said, not fatal
    let (ok, detail) = &items["cgroup-delegation"];
    assert!(*ok && detail.starts_with("rootless: no cgroup v2 subtree is delegated"), "{detail}");
    assert!(!check_items(&["env"]).contains_key("cgroup-delegation"), "privileged: no such item");
}

#[test]
fn user_namespaces_switched_off_are_named_with_the_alternatives() {
    if !require_root() {
        return;
    }
    // root of a user namespace of its own (so rootless too), whose limit is then 0
    let b = bin();
    let script = format!("echo 0 > /proc/sys/user/max_user_namespaces && exec {} check --format json", b.display());
    let items = check_items(&["unshare", "--user", "--map-root-user", "sh", "-c", &script, "sh"]);
    let (ok, detail) = &items["user-namespaces"];
    assert!(!ok, "{detail}");
    assert!(detail.contains("user.max_user_namespaces is 0"), "{detail}");
    assert!(detail.contains("privileged helper") && detail.contains("Kubernetes Job"), "{detail}");
    assert!(items["mode"].1.contains("inside a user namespace"), "{items:?}");
}

#[test]
fn a_container_like_proc_is_seen_to_refuse_a_fresh_procfs() {
    if !require_root() {
        return;
    }
    // a mount namespace whose /proc/sys is read-only, as a container runtime leaves it; then
    // the unprivileged caller inside it
    let b = bin();
    let script = format!(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec {} {} check --format json",
        NOBODY.join(" "),
        b.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.lines().next().unwrap_or("")).expect(&text);
    let item = v["items"].as_array().unwrap().iter().find(|i| i["name"] == "userns-procfs").unwrap();
    let detail = item["detail"].as_str().unwrap();
    assert!(detail.contains("cannot be mounted") && detail.contains("EPERM"), "{detail}");
    let userns = v["items"].as_array().unwrap().iter().find(|i| i["name"] == "user-namespaces").unwrap();
    assert_eq!(userns["ok"], true, "{userns}");
}

#[test]
fn a_seccomp_filter_that_kills_the_attempt_is_named() {
    if !require_root() {
        return;
    }
    // isolate-grade's own sandbox: its seccomp filter kills a process that asks for a user
    // namespace (as Docker's default profile refuses it with EPERM)
    let b = bin();
    let bind = format!("{}:/opt/isolate-grade-check", b.display());
    let out = Command::new(&b)
        .args(["run", "--config", "/dev/null", "--bind", &bind, "--", "/opt/isolate-grade-check", "check", "--format"])
        .arg("json")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.lines().next().unwrap_or("")).expect(&text);
    let userns = v["items"].as_array().unwrap().iter().find(|i| i["name"] == "user-namespaces").unwrap();
    let detail = userns["detail"].as_str().unwrap();
    assert_eq!(userns["ok"], false, "{detail}");
    assert!(detail.contains("a seccomp filter") && detail.contains("SIGSYS"), "{detail}");
}

/// A best-effort policy (no cgroup needed), readable by nobody, in a directory nobody owns.
struct Rootless {
    dir: tempfile::TempDir,
}

const NOBODY_UID: u32 = 65534;

impl Rootless {
    fn new() -> Rootless {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("best-effort.toml"),
            r#"description = "rootless tests: best-effort limits"
[limits]
memory = "512M"
cpu_time = "10s"
wall_time = "30s"
pids = 64
cpu_quota = 1.0
open_files = 256
file_size = "64M"
stack = "8M"
tmp_size = "64M"
shm_size = "16M"
[sandbox]
limits = "best-effort"
[[bind]]
source = "/usr"
[[bind]]
source = "/lib"
symlink = "copy"
optional = true
[[bind]]
source = "/lib64"
symlink = "copy"
optional = true
[[bind]]
source = "/bin"
symlink = "copy"
optional = true
[env]
PATH = "/usr/bin:/bin"
"#,
        )
        .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
        // the caller's runtime directory, as systemd makes it: the state directory goes there
        let runtime = dir.path().join("runtime");
        std::fs::create_dir(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&runtime, Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
        Rootless { dir }
    }

    fn runtime(&self) -> std::path::PathBuf {
        self.dir.path().join("runtime")
    }

    fn policy(&self) -> String {
        self.dir.path().join("best-effort.toml").display().to_string()
    }

    /// `isolate-grade run --report R ARGS -- PROGRAM` as nobody; (exit code, report, stdout, stderr).
    fn run(&self, args: &[&str], program: &[&str]) -> (i32, Value, String, String) {
        let report = self.dir.path().join("report.json");
        let _ = std::fs::remove_file(&report);
        let out = Command::new(NOBODY[0])
            .args(&NOBODY[1..])
            .arg(bin())
            .args(["run", "--report"])
            .arg(&report)
            .args(args)
            .arg("--")
            .args(program)
            .env("ISOLATE_GRADE_CONFIG", test_config())
            .env("XDG_RUNTIME_DIR", self.runtime())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let report =
            std::fs::read_to_string(&report).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
        (
            out.status.code().unwrap_or(-1),
            report,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn probe(&self, args: &[&str], probe_args: &[&str]) -> (i32, Value, Value) {
        let bind = format!("{}:/probe", probe().display());
        let policy = self.policy();
        let mut all = vec!["--policy", policy.as_str(), "--bind", bind.as_str()];
        all.extend_from_slice(args);
        let mut program = vec!["/probe"];
        program.extend_from_slice(probe_args);
        let (code, report, stdout, stderr) = self.run(&all, &program);
        let seen = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("probe output: {e}\nstdout: {stdout}\nstderr: {stderr}\nreport: {report}"));
        (code, report, seen)
    }
}

/// Processes on the host running as `uid`.
fn processes_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .map(|l| l.split_whitespace().nth(1) == Some(&uid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn an_unprivileged_caller_gets_the_same_sandbox_in_a_user_namespace() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    let (code, report, seen) = r.probe(&[], &[]);
    assert_eq!(code, 0, "{report}");
    let sandbox = &report["sandbox"];
    assert_eq!(sandbox["mode"], "rootless", "{report}");
    assert_eq!(sandbox["cgroup"], "none", "{report}");
    let not: Vec<&str> = sandbox["not_enforced"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(not.contains(&"memory") && not.contains(&"pids"), "{not:?}");
    // the slot's uid inside, no supplementary group, not one capability, no_new_privs, seccomp
    assert_eq!(seen["uid"], serde_json::json!([60000, 60000, 60000]), "{seen}");
    assert_eq!(seen["groups"], serde_json::json!([]), "{seen}");
    for set in ["CapAmb", "CapBnd", "CapEff", "CapInh", "CapPrm"] {
        assert_eq!(seen["status"][set], "0000000000000000", "{set}: {seen}");
    }
    assert_eq!(seen["status"]["NoNewPrivs"], "1");
    assert_eq!(seen["status"]["Seccomp"], "2");
    assert_eq!(seen["net_devices"], serde_json::json!(["lo"]));
    assert_eq!(seen["hostname"], "sandbox");
    // only what was bound, and the sandbox's own filesystems
    let points: Vec<&str> =
        seen["mounts"].as_array().unwrap().iter().map(|m| m["mount_point"].as_str().unwrap()).collect();
    for p in &points {
        assert!(
            ["/", "/tmp", "/dev", "/dev/shm", "/proc", "/usr", "/probe"].contains(p) || p.starts_with("/dev/"),
            "{p} mounted: {points:?}"
        );
    }
    // the caller's processes are out of sight: the probe is PID 2, its init PID 1
    assert_eq!(seen["pid"], 2);
}

#[test]
fn required_limits_are_refused_without_a_cgroup() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    // the built-in default policy: limits required
    let (code, report, _, stderr) = r.run(&[], &["/bin/true"]);
    assert_eq!(code, 3, "{report} {stderr}");
    assert_eq!(report["status"], "sandbox-error");
    assert_eq!(report["sandbox_error"]["step"], "cgroup", "{report}");
    let msg = report["sandbox_error"]["message"].as_str().unwrap();
    // what was looked at (the cgroup the caller runs in: root's, not nobody's) and why it
    // can't be used, then the alternatives
    assert!(msg.starts_with("rootless: no cgroup v2 subtree is delegated to this caller (uid 65534): "), "{msg}");
    assert!(
        msg.contains("not by the caller: not delegated to it") || msg.contains("cgroup v2 is not mounted"),
        "{msg}"
    );
    assert!(msg.contains("Delegate=yes") && msg.contains("rootless_cgroup_root"), "{msg}");
    assert!(msg.contains("best-effort") && msg.contains("privileged helper"), "{msg}");
    assert_eq!(report["sandbox"]["mode"], "rootless");
}

/// A cgroup v2 subtree chowned to nobody, with nobody's process inside it, as an admin or
/// systemd would delegate it. On this hybrid host v2 has no controllers (v1 holds memory and
/// pids): refused, saying so, and nothing is written in the subtree. (On a pure v2 host the
/// run is limited there: the VM's `rootless` part, scripts/vm/guest.sh.)
#[test]
fn a_delegated_subtree_without_the_controllers_is_refused_naming_them() {
    if !require_root() {
        return;
    }
    let h = isolate_grade::cgroup::Hierarchies::read(std::path::Path::new("/proc/self/mountinfo")).unwrap();
    let Some(mount) = h.v2.clone() else {
        eprintln!("no cgroup2 mount: nothing to delegate");
        return;
    };
    if h.v2_controllers().iter().any(|c| c == "pids") {
        eprintln!("a pure cgroup v2 host: the VM's rootless part covers it");
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    let dir = mount.join(format!("isolate-grade-test-rcg-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    for f in ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
        std::os::unix::fs::chown(dir.join(f), Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
    }
    let report = r.dir.path().join("report.json");
    // the shell enters the subtree as root, then becomes nobody
    let script = format!(
        "echo $$ > {dir}/cgroup.procs && exec {nobody} env ISOLATE_GRADE_CONFIG={config} XDG_RUNTIME_DIR={runtime} \
         {bin} run --report {report} -- /bin/true",
        dir = dir.display(),
        nobody = NOBODY.join(" "),
        config = test_config().display(),
        runtime = r.runtime().display(),
        bin = bin().display(),
        report = report.display(),
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let children: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    std::fs::remove_dir(&dir).unwrap();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| panic!("{out:?}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out.status.code(), Some(3), "{v}");
    assert_eq!(v["sandbox_error"]["step"], "cgroup", "{v}");
    let msg = v["sandbox_error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("{}: controllers [\"memory\", \"pids\", \"cpu\"] are not enabled", dir.display())),
        "{msg}"
    );
    assert!(msg.contains("bound to cgroup v1 hierarchies"), "{msg}");
    assert!(children.is_empty(), "made in the subtree: {children:?}");
}

#[test]
fn the_wall_clock_holds_and_nothing_of_the_run_is_left() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    let before = processes_of(NOBODY_UID);
    // a daemon that double-forks and ignores SIGTERM, then the program sleeps past the limit
    let script = "(trap '' TERM; sleep 300) & (setsid sh -c 'trap \"\" TERM; sleep 300' &) ; sleep 300";
    let started = std::time::Instant::now();
    let (code, report, _, stderr) = r.run(&["--policy", &r.policy(), "--wall-time", "1s"], &["/bin/sh", "-c", script]);
    assert_eq!(report["status"], "timeout-wall", "{report} {stderr}");
    assert_eq!(code, 5);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    let after: Vec<u32> = processes_of(NOBODY_UID).into_iter().filter(|p| !before.contains(p)).collect();
    assert!(after.is_empty(), "left running as the caller: {after:?}");
}

#[test]
fn the_sandbox_gets_nothing_of_the_callers_beyond_its_binds() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    // the caller's own files: one bound read-only, one not bound at all
    let mine = r.dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("given.txt"), "given").unwrap();
    std::fs::write(r.dir.path().join("secret.txt"), "secret").unwrap();
    for p in [&mine, &mine.join("given.txt"), &r.dir.path().join("secret.txt")] {
        std::os::unix::fs::chown(p, Some(NOBODY_UID), Some(NOBODY_UID)).unwrap();
    }
    let bind = format!("{}:/data", mine.display());
    let secret = r.dir.path().join("secret.txt").display().to_string();
    let (code, report, seen) = r.probe(
        &["--bind", &bind],
        &[
            "--try-read",
            "/data/given.txt",
            "--try-write",
            "/data/given.txt",
            "--try-write",
            "/data/new",
            "--exists",
            &secret,
        ],
    );
    assert_eq!(code, 0, "{report}");
    let checks = seen["checks"].as_array().unwrap();
    let result = |what: &str, path: &str| {
        checks
            .iter()
            .find(|c| c["kind"] == what && c["path"] == path)
            .unwrap_or_else(|| panic!("{what} {path}: {seen}"))["ok"]
            .clone()
    };
    assert_eq!(result("read", "/data/given.txt"), true, "{seen}");
    assert_eq!(result("write", "/data/given.txt"), false, "a read-only bind of the caller's own file: {seen}");
    assert_eq!(result("write", "/data/new"), false, "{seen}");
    assert_eq!(result("exists", secret.as_str()), false, "{seen}");
    assert_eq!(std::fs::read_to_string(mine.join("given.txt")).unwrap(), "given");
    assert!(!mine.join("new").exists());

    // the caller's other processes and ports: a sleeper and a listener of theirs on the
    // host's loopback, out of reach (another PID and network namespace)
    let sleeper = Command::new(NOBODY[0]).args(&NOBODY[1..]).args(["sleep", "60"]).spawn().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let attack = format!(
        "kill -9 {pid} && echo KILLED; (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo CONNECTED; true",
        pid = sleeper.id()
    );
    let (code, report, stdout, stderr) = r.run(&["--policy", &r.policy()], &["/bin/bash", "-c", &attack]);
    let mut sleeper = sleeper;
    let still = sleeper.try_wait().unwrap().is_none();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(code, 0, "{report} {stderr}");
    assert!(!stdout.contains("KILLED") && still, "the sandbox signalled the caller's process: {stdout}");
    assert!(!stdout.contains("CONNECTED"), "the sandbox reached the caller's port: {stdout}");
    assert!(listener.accept().is_err(), "a connection arrived from the sandbox");
}

#[test]
fn a_user_namespace_inside_is_refused_by_seccomp() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    let (code, report, _, _) = r.run(&["--policy", &r.policy()], &["/usr/bin/unshare", "--user", "true"]);
    assert_eq!(report["status"], "seccomp-violation", "{report}");
    assert_eq!(code, 9);
}

#[test]
fn the_state_directory_is_the_callers_own_and_one_someone_else_made_is_refused() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    let state = r.runtime().join("isolate-grade");
    // made by the first run, the caller's and closed to others
    let (code, report, _, stderr) = r.run(&["--policy", &r.policy()], &["/bin/true"]);
    assert_eq!(code, 0, "{report} {stderr}");
    let md = std::fs::symlink_metadata(&state).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.mode() & 0o777), (NOBODY_UID, 0o700));
    // root's instead (closed to others too: only whose it is tells it apart)
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (code, report, _, stderr) = r.run(&["--policy", &r.policy()], &["/bin/true"]);
    assert_eq!(code, 3, "{report} {stderr}");
    assert_eq!(report["sandbox_error"]["step"], "state-dir", "{report}");
    assert!(report["sandbox_error"]["message"].as_str().unwrap().contains("owned by uid 65534"), "{report}");
}

/// In a mount namespace made container-like (what Docker leaves: /proc/sys and
/// /sys/fs/cgroup read-only, /proc/kcore-like files covered, here /proc/timer_list), `run
/// --policy POLICY --report R -- PROGRAM` as the unprivileged caller inside; (exit code,
/// report, stdout).
fn in_a_container_like_namespace(r: &Rootless, policy: &str, program: &str) -> (Option<i32>, Value, String) {
    let report = r.dir.path().join("report.json");
    let _ = std::fs::remove_file(&report);
    let script = format!(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         mount --bind /dev/null /proc/timer_list && \
         mount --bind /sys/fs/cgroup /sys/fs/cgroup && mount -o remount,bind,ro /sys/fs/cgroup && \
         exec {nobody} env ISOLATE_GRADE_CONFIG={config} XDG_RUNTIME_DIR={runtime} {bin} run --policy {policy} \
         --report {report} -- {program}",
        nobody = NOBODY.join(" "),
        config = test_config().display(),
        runtime = r.runtime().display(),
        bin = bin().display(),
        report = report.display(),
    );
    let out =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| panic!("{out:?}"));
    (out.status.code(), serde_json::from_str(&text).unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn in_a_container_like_mount_namespace_a_masked_proc_is_refused_in_words() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    let (code, v, _) = in_a_container_like_namespace(&r, &r.policy(), "/bin/true");
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["sandbox_error"]["step"], "proc", "{v}");
    let msg = v["sandbox_error"]["message"].as_str().unwrap();
    assert!(msg.contains("masked") && msg.contains("privileged helper") && msg.contains(r#"proc = "none""#), "{msg}");
}

/// There, a policy with `proc = "none"` runs: no procfs inside, /proc an empty directory.
#[test]
fn in_a_container_like_mount_namespace_a_policy_without_proc_runs() {
    if !require_root() {
        return;
    }
    let _s = serial();
    let r = Rootless::new();
    let policy = r.dir.path().join("no-proc.toml");
    let text = std::fs::read_to_string(r.policy()).unwrap();
    std::fs::write(&policy, text.replace("[sandbox]\n", "[sandbox]\nproc = \"none\"\n")).unwrap();
    let (code, v, stdout) = in_a_container_like_namespace(
        &r,
        policy.to_str().unwrap(),
        "/bin/sh -c 'echo in; ls -A /proc; test -d /proc && echo empty'",
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["sandbox"]["mode"], "rootless", "{v}");
    assert_eq!(stdout, "in\nempty\n", "{v}");
}
