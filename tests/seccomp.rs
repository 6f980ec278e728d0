//! The seccomp filter as installed, end to end: a small C program, compiled here and bound in
//! at /attack, makes one dangerous syscall per run through the real binary. It prints
//! `before` first and `after ret=R errno=E` if the call returned, so a test tells "killed at
//! the call" from "never got there" and reads the exact errno of a refused call.
//!
//! The tests in this file run one at a time ([`serial`]): a slot is reused as soon as a run
//! ends, so "no process of this uid is left" is only meaningful while no other run of ours
//! can have taken the same slot (and uid) in the meantime.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `/attack MODE [ARGS]`. Output goes through write(2) directly, so nothing sits in a stdio
/// buffer when the process is killed.
const ATTACK_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static int report(long ret) {
    char buf[96];
    snprintf(buf, sizeof buf, "after ret=%ld errno=%d\n", ret, ret < 0 ? errno : 0);
    say(buf);
    return 0;
}

/* The child of a clone that should not have happened leaves at once. */
static long reap(long ret) {
    if (ret == 0) _exit(0);
    if (ret > 0) waitpid(ret, NULL, __WALL);
    return ret;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *m = argv[1];
    char c = 'x';
    int n;
    say("before\n");
    if (!strcmp(m, "ptrace")) return report(ptrace(PTRACE_TRACEME, 0, 0, 0));
    /* stdin is /dev/null: an allowed TIOCSTI or FIONREAD returns ENOTTY */
    if (!strcmp(m, "tiocsti")) return report(ioctl(0, TIOCSTI, &c));
    /* the kernel reads the command as an unsigned int: the upper half is dropped */
    if (!strcmp(m, "tiocsti-high")) return report(syscall(SYS_ioctl, 0, 0xdead000000005412ULL, &c));
    if (!strcmp(m, "tioclinux-high")) return report(syscall(SYS_ioctl, 0, 0xdead00000000541cULL, &c));
    if (!strcmp(m, "fionread")) return report(ioctl(0, FIONREAD, &n));
    if (!strcmp(m, "unshare-user")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(m, "clone-user")) return report(reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
    if (!strcmp(m, "clone-net")) return report(reap(syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0)));
    if (!strcmp(m, "clone-fork")) return report(reap(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)));
    if (!strcmp(m, "clone3-user")) {
        unsigned long long args[11] = {0}; /* struct clone_args, CLONE_ARGS_SIZE_VER2 */
        args[0] = CLONE_NEWUSER;           /* flags */
        args[4] = SIGCHLD;                 /* exit_signal */
        return report(reap(syscall(SYS_clone3, args, sizeof args)));
    }
    if (!strcmp(m, "socket") && (argc == 4 || argc == 5)) {
        /* raw syscall: the family is passed as a full 64-bit register */
        unsigned long long protocol = argc == 5 ? strtoull(argv[4], 0, 0) : 0;
        return report(syscall(SYS_socket, strtoull(argv[2], 0, 0), strtoull(argv[3], 0, 0), protocol));
    }
    if (!strcmp(m, "connect")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return report(fd);
        say("socket ok\n");
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(80)};
        inet_pton(AF_INET, "1.1.1.1", &a.sin_addr);
        return report(connect(fd, (struct sockaddr *)&a, sizeof a));
    }
    if (!strcmp(m, "int80-getpid")) { /* the i386 ABI: getpid is 20 there */
        long ret;
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "r8", "r9", "r10", "r11", "memory");
        if (ret < 0 && ret > -4096) { errno = -ret; ret = -1; }
        return report(ret);
    }
    if (!strcmp(m, "x32-getpid")) { /* the x32 ABI: native numbers with bit 30 set */
        long ret;
        __asm__ volatile("syscall" : "=a"(ret) : "a"(39L | 0x40000000L) : "rcx", "r11", "memory");
        if (ret < 0 && ret > -4096) { errno = -ret; ret = -1; }
        return report(ret);
    }
    if (!strcmp(m, "nr") && argc >= 3) { /* nr N [ARGS]: syscall N, missing arguments 0 */
        unsigned long long a[6] = {0};
        for (int i = 0; i < 6 && i + 3 < argc; i++) a[i] = strtoull(argv[i + 3], 0, 0);
        return report(syscall(strtol(argv[2], 0, 0), a[0], a[1], a[2], a[3], a[4], a[5]));
    }
    say("bad arguments\n");
    return 2;
}
"#;

/// The attack program, compiled once per test process (into cargo's scratch directory for
/// integration tests; built under a unique name, then renamed into place).
fn attack_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let unique = format!("seccomp-attack-{}", std::process::id());
        let source = dir.join(format!("{unique}.c"));
        let built = dir.join(&unique);
        std::fs::write(&source, ATTACK_C).unwrap();
        let out = Command::new("cc")
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&built)
            .arg(&source)
            .output()
            .expect("run cc (the seccomp tests compile a C program)");
        assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&source).unwrap();
        let program = dir.join("seccomp-attack");
        std::fs::rename(&built, &program).unwrap();
        program
    })
}

/// Runs `/attack ARGS` in the sandbox (with `extra` options), then checks nothing is left.
fn attack_with(extra: &[&str], args: &[&str]) -> Run {
    let bind = format!("{}:/attack", attack_program().display());
    let mut options = DEFAULTS.to_vec();
    options.extend(["--bind", &bind, "--wall-time", "10s"]);
    options.extend_from_slice(extra);
    let mut program = vec!["/attack"];
    program.extend_from_slice(args);
    let r = run(&options, &program);
    assert_nothing_left(&r);
    r
}

fn attack(args: &[&str]) -> Run {
    attack_with(&[], args)
}

fn assert_nothing_left(r: &Run) {
    let uid = r.report["sandbox"]["uid"].as_u64().unwrap_or_else(|| panic!("no sandbox.uid in the report: {r:?}"));
    let left = processes_of_uid(u32::try_from(uid).unwrap());
    assert!(left.is_empty(), "processes of uid {uid} outlived the run: {left:?}");
}

/// Why `r` is not "killed by the filter at the call", if it is not.
fn not_killed_at_the_call(r: &Run) -> Option<String> {
    let verdict = (r.status(), r.code, r.report["signal"].as_str());
    let reached = r.stdout.starts_with("before\n");
    let returned = r.stdout.contains("after");
    if verdict == ("seccomp-violation", 9, Some("SIGSYS")) && reached && !returned {
        None
    } else {
        Some(format!("{verdict:?}, stdout {:?}, stderr {:?}", r.stdout, r.stderr))
    }
}

#[track_caller]
fn assert_killed_at_the_call(r: &Run, what: &str) {
    if let Some(why) = not_killed_at_the_call(r) {
        panic!("{what}: expected a seccomp kill at the call, got {why}");
    }
}

/// The call returned -1 with `errno`, and the program went on to exit 0.
#[track_caller]
fn assert_failed_with(r: &Run, errno: i32) {
    assert_eq!((r.status(), r.code), ("ok", 0), "{r:?}");
    assert!(r.stdout.starts_with("before\n"), "{r:?}");
    assert!(r.stdout.ends_with(&format!("after ret=-1 errno={errno}\n")), "expected errno {errno}: {r:?}");
}

/// The call was allowed and succeeded.
#[track_caller]
fn assert_allowed(r: &Run) {
    assert_eq!((r.status(), r.code), ("ok", 0), "{r:?}");
    assert!(r.stdout.contains("after ret=") && r.stdout.ends_with(" errno=0\n"), "{r:?}");
}

#[test]
fn ptrace_is_killed_at_the_call() {
    let Some(_serial) = root_serial() else { return };
    let r = attack(&["ptrace"]);
    assert_killed_at_the_call(&r, "ptrace(PTRACE_TRACEME)");
    assert_eq!(r.report["sandbox"]["seccomp"], "kill", "{r:?}");
}

#[test]
fn tiocsti_is_killed_even_with_high_bits_in_the_command() {
    let Some(_serial) = root_serial() else { return };
    for mode in ["tiocsti", "tiocsti-high", "tioclinux-high"] {
        assert_killed_at_the_call(&attack(&[mode]), mode);
    }
    // other ioctls are allowed (FIONREAD on stdin, the supervisor's pipe)
    assert_allowed(&attack(&["fionread"]));
}

#[test]
fn new_namespaces_are_killed_plain_clone_is_not() {
    let Some(_serial) = root_serial() else { return };
    for mode in ["unshare-user", "clone-user", "clone-net"] {
        assert_killed_at_the_call(&attack(&[mode]), mode);
    }
    // clone without namespace flags is fork
    assert_allowed(&attack(&["clone-fork"]));
}

#[test]
fn fork_threads_and_subprocesses_still_work() {
    let Some(_serial) = root_serial() else { return };
    // glibc's fork is clone(SIGCHLD); pthread_create and posix_spawn try clone3 first and fall
    // back to clone on ENOSYS
    let program = r#"
import os, subprocess, threading
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
seen = []
t = threading.Thread(target=lambda: seen.append("ran"))
t.start()
t.join()
print("thread", *seen)
print("subprocess", subprocess.run(["/bin/echo", "ran"], capture_output=True).stdout.decode().strip())
"#;
    let r = run(&[&DEFAULTS[..], &["--wall-time", "10s"]].concat(), &["python3", "-c", program]);
    assert_eq!((r.status(), r.code), ("ok", 0), "{r:?}");
    assert_eq!(r.stdout, "fork 7\nthread ran\nsubprocess ran\n", "{r:?}");
    assert_nothing_left(&r);
}

#[test]
fn clone3_fails_with_enosys() {
    let Some(_serial) = root_serial() else { return };
    // Its flags are in memory the filter cannot read, so it is refused whatever they are;
    // ENOSYS (not a kill) is what makes glibc fall back to clone.
    assert_failed_with(&attack(&["clone3-user"]), libc::ENOSYS);
}

#[test]
fn netlink_but_route_packet_and_vsock_sockets_fail_with_eafnosupport() {
    let Some(_serial) = root_serial() else { return };
    let high = (1u64 << 32) | libc::AF_NETLINK as u64; // the kernel reads an int
    let (raw, stream) = (libc::SOCK_RAW.to_string(), libc::SOCK_STREAM.to_string());
    let netlink = libc::AF_NETLINK.to_string();
    for args in [
        // netlink to the kernel's subsystems: uevents (host-wide), audit, netfilter
        vec![netlink.clone(), raw.clone(), libc::NETLINK_KOBJECT_UEVENT.to_string()],
        vec![netlink.clone(), raw.clone(), libc::NETLINK_AUDIT.to_string()],
        vec![netlink.clone(), raw.clone(), libc::NETLINK_NETFILTER.to_string()],
        vec![format!("{high:#x}"), raw.clone(), libc::NETLINK_KOBJECT_UEVENT.to_string()],
        vec![libc::AF_PACKET.to_string(), raw.clone()],
        vec![libc::AF_VSOCK.to_string(), stream.clone()],
    ] {
        let mut argv = vec!["socket"];
        argv.extend(args.iter().map(String::as_str));
        assert_failed_with(&attack(&argv), libc::EAFNOSUPPORT);
    }
    // NETLINK_ROUTE stays (getifaddrs; libzmq aborts without it), in the sandbox's own netns
    assert_allowed(&attack(&["socket", &netlink, &raw, &libc::NETLINK_ROUTE.to_string()]));
    // the ordinary families are allowed
    for family in [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX] {
        assert_allowed(&attack(&["socket", &family.to_string(), &stream]));
    }
}

#[test]
fn tcp_sockets_work_but_there_is_no_network() {
    let Some(_serial) = root_serial() else { return };
    let r = attack(&["connect"]);
    assert!(r.stdout.contains("socket ok"), "{r:?}");
    // only loopback in the sandbox's network namespace: no route to anywhere
    assert_failed_with(&r, libc::ENETUNREACH);
}

/// Every unconditionally denied syscall (policies/seccomp.toml), written out here so that an
/// entry dropped from the list fails this test. All arguments are 0: the filter acts on entry,
/// and a call that got through would return an error (or do nothing) as an unprivileged user.
const DENIED: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("quotactl", libc::SYS_quotactl),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("vhangup", libc::SYS_vhangup),
    ("uselib", libc::SYS_uselib),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("personality", libc::SYS_personality),
];

#[test]
fn every_denied_syscall_is_killed_in_its_own_sandbox() {
    let Some(_serial) = root_serial() else { return };
    // the same path with an allowed call returns: the kills below are the filter's
    assert_allowed(&attack(&["nr", &libc::SYS_getpid.to_string()]));
    let failures: Vec<String> = DENIED
        .iter()
        .filter_map(|&(name, nr)| {
            not_killed_at_the_call(&attack(&["nr", &nr.to_string()])).map(|w| format!("{name}: {w}"))
        })
        .collect();
    assert!(failures.is_empty(), "not killed by the filter:\n{}", failures.join("\n"));
}

#[test]
fn foreign_syscall_abis_are_killed() {
    let Some(_serial) = root_serial() else { return };
    // i386 getpid through int 0x80, and x32 getpid (bit 30): numbers the native filter would
    // read as something else, or not at all
    assert_killed_at_the_call(&attack(&["int80-getpid"]), "int 0x80");
    assert_killed_at_the_call(&attack(&["x32-getpid"]), "x32");
}

#[test]
fn a_denied_call_in_a_thread_kills_the_whole_process() {
    let Some(_serial) = root_serial() else { return };
    // A kill of the calling thread only would leave the main thread free to carry on.
    let program = format!(
        r#"
import ctypes, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def attack():
    print("thread: before", flush=True)
    libc.syscall({ptrace}, 0, 0, 0, 0)
    print("thread: after", flush=True)
threading.Thread(target=attack, daemon=True).start()
time.sleep(1)
print("main: survived", flush=True)
"#,
        ptrace = libc::SYS_ptrace
    );
    let r = run(&[&DEFAULTS[..], &["--wall-time", "10s"]].concat(), &["python3", "-c", &program]);
    assert!(r.stdout.contains("thread: before"), "{r:?}");
    assert!(!r.stdout.contains("after") && !r.stdout.contains("survived"), "{r:?}");
    assert_eq!((r.status(), r.code, r.report["signal"].as_str()), ("seccomp-violation", 9, Some("SIGSYS")), "{r:?}");
    assert_nothing_left(&r);
}

#[test]
fn errno_policy_turns_kills_into_eperm_but_still_kills_foreign_abis() {
    let Some(_serial) = root_serial() else { return };
    let default = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.toml")).unwrap();
    assert_eq!(default.matches("\nseccomp = \"kill\"\n").count(), 1, "policies/default.toml changed");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("errno.toml");
    std::fs::write(&policy, default.replace("\nseccomp = \"kill\"\n", "\nseccomp = \"errno\"\n")).unwrap();
    let errno_policy = ["--policy", policy.to_str().unwrap()];

    let r = attack_with(&errno_policy, &["ptrace"]);
    assert_eq!(r.report["sandbox"]["seccomp"], "errno", "{r:?}");
    assert_failed_with(&r, libc::EPERM);
    // entries with an errno of their own keep it
    assert_failed_with(&attack_with(&errno_policy, &["clone3-user"]), libc::ENOSYS);
    // the foreign-ABI filter kills whatever the policy says
    assert_killed_at_the_call(&attack_with(&errno_policy, &["int80-getpid"]), "int 0x80 under seccomp = \"errno\"");
}

/// `sysfs(3)`: how many filesystem types the kernel has. Obsolete, harmless, needed by nothing:
/// neither allowed (policies/seccomp.toml's allow groups) nor denied (the deny list), so only
/// the allow list's default decides it.
const UNLISTED: libc::c_long = libc::SYS_sysfs;

fn policy_with_seccomp(dir: &Path, mode: &str) -> PathBuf {
    let default = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.toml")).unwrap();
    assert_eq!(default.matches("\nseccomp = \"kill\"\n").count(), 1, "policies/default.toml changed");
    let policy = dir.join(format!("{mode}.toml"));
    std::fs::write(&policy, default.replace("\nseccomp = \"kill\"\n", &format!("\nseccomp = \"{mode}\"\n"))).unwrap();
    policy
}

#[test]
fn a_syscall_outside_the_allow_list_fails_with_enosys() {
    let Some(_serial) = root_serial() else { return };
    let sysfs = UNLISTED.to_string();
    // Not a kill: ENOSYS is what the kernel says of a syscall it lacks, and what libraries
    // probing newer calls fall back on
    let r = attack(&["nr", &sysfs, "3"]);
    assert_eq!(r.report["sandbox"]["seccomp"], "kill", "{r:?}");
    assert_failed_with(&r, libc::ENOSYS);
    // the errno policy changes the deny list's answer, not the allow list's
    let dir = tempfile::tempdir().unwrap();
    let errno = policy_with_seccomp(dir.path(), "errno");
    assert_failed_with(&attack_with(&["--policy", errno.to_str().unwrap()], &["nr", &sysfs, "3"]), libc::ENOSYS);
    // ...and a listed call on the same path goes through
    assert_allowed(&attack(&["nr", &libc::SYS_getppid.to_string()]));
}

/// The kernel's seccomp records (audit type 1326) for `exe`, from the kernel log.
fn seccomp_records(exe: &str) -> Vec<String> {
    let out = Command::new("dmesg").output().expect("run dmesg");
    assert!(out.status.success(), "dmesg: {}", String::from_utf8_lossy(&out.stderr));
    let needle = format!("exe=\"{exe}\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("type=1326") && l.contains(&needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn log_policy_lets_an_unlisted_syscall_through_logged_and_still_kills_denied_ones() {
    let Some(_serial) = root_serial() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = policy_with_seccomp(dir.path(), "log");
    // bound at a name of its own, so its records are told from every other program's
    let exe = format!("/attack-log-{}", std::process::id());
    let bind = format!("{}:{exe}", attack_program().display());
    let args = ["--policy", log.to_str().unwrap(), "--bind", &bind, "--wall-time", "10s"];
    let options = [&DEFAULTS[..], &args[..]].concat();
    let sysfs = UNLISTED.to_string();
    // The kernel rate-limits its log (printk, 10 lines per 5 s) when no audit daemon reads
    // it, and the kills of the other tests fill it: try a few times, apart
    let mut records = Vec::new();
    for attempt in 0..4 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_secs(6));
        }
        let r = run(&options, &[&exe, "nr", &sysfs, "3"]);
        assert_nothing_left(&r);
        assert_eq!(r.report["sandbox"]["seccomp"], "log", "{r:?}");
        // let through: sysfs answered (the number of filesystem types)
        assert_eq!((r.status(), r.code), ("ok", 0), "{r:?}");
        assert!(r.stdout.starts_with("before\nafter ret=") && r.stdout.ends_with(" errno=0\n"), "{r:?}");
        records = seccomp_records(&exe);
        if !records.is_empty() {
            break;
        }
    }
    // logged, as SECCOMP_RET_LOG, with its number
    let (nr, code) = (format!(" syscall={UNLISTED} "), format!(" code={:#x}", libc::SECCOMP_RET_LOG));
    assert!(records.iter().any(|l| l.contains(&nr) && l.contains(&code)), "no log record for sysfs: {records:?}");
    // the deny list still kills, and foreign ABIs too
    assert_killed_at_the_call(&run(&options, &[&exe, "ptrace"]), "ptrace under seccomp = \"log\"");
    assert_killed_at_the_call(&run(&options, &[&exe, "int80-getpid"]), "int 0x80 under seccomp = \"log\"");
}
