//! The seccomp filters, compiled with seccompiler from `policies/seccomp.toml` (data, with a
//! reason per entry): an allow list (default-deny: whatever it does not name fails with
//! `ENOSYS`, or is only logged under `seccomp = "log"`), the deny list on top of it (one filter
//! per action; it kills, or narrows allowed calls by their arguments), and a small hand-written
//! filter that kills every non-native syscall ABI.
//!
//! Filters are compiled when the binary is built (`build.rs` runs this module's code; a
//! cross-build compiles them in the supervisor instead, before any privileged step), and
//! installed by the sandbox as the very last step before `execve`, so they only have to allow
//! the program.
//!
//! ```
//! use isolate_grade::{policy::SeccompAction, seccomp};
//! let filters = seccomp::compile(SeccompAction::Kill).unwrap();
//! assert!(filters.len() >= 3);
//! ```

use crate::policy::SeccompAction;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction as Act, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The allow and deny lists, compiled into the binary.
pub const RULES: &str = include_str!("../policies/seccomp.toml");

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("policies/seccomp.toml: {0}")]
    Data(String),
    #[error("unknown syscall {0:?} in policies/seccomp.toml")]
    UnknownSyscall(String),
    #[error("unknown constant {0:?} in policies/seccomp.toml")]
    UnknownConstant(String),
    #[error("syscall {0:?} is denied unconditionally and again with conditions in policies/seccomp.toml")]
    Duplicate(String),
    #[error("syscall {0:?} is in more than one allow group in policies/seccomp.toml")]
    AllowedTwice(String),
    #[error("syscall {0:?} is both allowed and denied unconditionally in policies/seccomp.toml")]
    Contradiction(String),
    #[error("compiling the filter: {0}")]
    Compile(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    deny: Vec<Entry>,
    allow: Vec<AllowGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    syscalls: Vec<String>,
    #[allow(dead_code)] // documentation for people; required so no entry goes without one
    reason: String,
    arg: Option<u8>,
    #[serde(default)]
    any_bit: Vec<String>,
    #[serde(default)]
    low32_in: Vec<String>,
    except_arg: Option<u8>,
    #[serde(default)]
    except_low32_in: Vec<String>,
    errno: Option<String>,
}

/// Syscalls the program may make, with why (the reason is for people, but required).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowGroup {
    syscalls: Vec<String>,
    #[allow(dead_code)]
    reason: String,
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// What an allow-list miss does. `ENOSYS`, not `EPERM`: it is what the kernel itself answers
/// for a syscall it does not have, and what glibc, Python and other runtimes take as "use the
/// older call instead" (clone3, statx, faccessat2, close_range, rseq, pidfd_*, epoll_pwait2...
/// are all probed that way). `EPERM` reads as "you may not" and breaks those fallbacks: glibc
/// 2.33 falls back from faccessat2 on ENOSYS only, so container profiles that answered EPERM
/// made its `access`/`faccessat` checks fail instead.
/// A kill would end a kernel for a probe it would have survived. Under `log` the kernel
/// lets the call through and logs it (audit type 1326): that mode exists to find what a
/// library needs before the list is changed.
fn allow_miss(action: SeccompAction) -> u32 {
    match action {
        SeccompAction::Kill | SeccompAction::Errno => libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        SeccompAction::Log => libc::SECCOMP_RET_LOG,
    }
}

/// Compile the built-in rules: the deny list (one filter per action: seccompiler gives a
/// filter one match action), the ABI filter, then the allow list. The kernel runs them
/// all and the strictest result wins (kill, then errno, then log, then allow), so a deny entry
/// with conditions narrows an allowed syscall, and a denied one is denied whatever the allow
/// list says.
pub fn compile(action: SeccompAction) -> Result<Vec<BpfProgram>, SeccompError> {
    #[cfg(seccomp_precompiled)]
    if let Some(filters) = precompiled(action) {
        return Ok(filters);
    }
    compile_rules(RULES, action)
}

/// The filters of [`compile`], compiled by `build.rs` with this same code: parsing and
/// compiling the rules took ~0.2 ms of every run's start. Per action (kill, errno, log),
/// each filter's instructions as (code, jt, jf, k).
#[cfg(seccomp_precompiled)]
type Precompiled = &'static [&'static [&'static [(u16, u8, u8, u32)]]];

#[cfg(seccomp_precompiled)]
const PRECOMPILED: Precompiled = include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

#[cfg(seccomp_precompiled)]
fn precompiled(action: SeccompAction) -> Option<Vec<BpfProgram>> {
    let index = match action {
        SeccompAction::Kill => 0,
        SeccompAction::Errno => 1,
        SeccompAction::Log => 2,
    };
    let filters = PRECOMPILED.get(index)?;
    Some(filters.iter().map(|f| f.iter().map(|&(code, jt, jf, k)| jump(code, k, jt, jf)).collect()).collect())
}

fn compile_rules(text: &str, action: SeccompAction) -> Result<Vec<BpfProgram>, SeccompError> {
    let file: RulesFile = toml::from_str(text).map_err(|e| SeccompError::Data(e.to_string()))?;
    let mut filters = deny_filters(&file, action)?;
    filters.push(foreign_abi_filter());
    // Last: the filters are installed in this order, and installing one takes the `seccomp`
    // syscall, which the allow list does not have (the program has no business with it)
    filters.push(allow_filter(&file, action)?);
    Ok(filters)
}

/// The allow list as one filter: a listed syscall is allowed (unconditionally: argument checks
/// are the deny list's), anything else gets [`allow_miss`]. Every verdict here depends on the
/// syscall number alone, so the kernel's seccomp action cache (Linux 5.11+) answers allowed
/// calls without running this filter at all.
fn allow_filter(file: &RulesFile, action: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let unconditional: BTreeSet<&str> =
        file.deny.iter().filter(|e| e.arg.is_none()).flat_map(|e| e.syscalls.iter().map(String::as_str)).collect();
    let mut allowed = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for group in &file.allow {
        if group.syscalls.is_empty() {
            return Err(SeccompError::Data("an allow group without syscalls".into()));
        }
        for name in &group.syscalls {
            if !seen.insert(name.as_str()) {
                return Err(SeccompError::AllowedTwice(name.clone()));
            }
            if unconditional.contains(name.as_str()) {
                return Err(SeccompError::Contradiction(name.clone()));
            }
            // None: not a syscall of this architecture
            allowed.extend(number(name)?);
        }
    }
    // What the deny list refuses unconditionally, this filter lets through, to the deny filter:
    // when two filters answer with the same kind of action (errno and errno), the kernel takes
    // the data of the one installed last, which is this one, and its ENOSYS would hide the deny
    // list's own answer (EPERM under `errno`, clone3's ENOSYS, a future entry's errno). ALLOW
    // is the weakest answer, so the deny filter's always wins.
    for name in unconditional {
        allowed.extend(number(name)?);
    }
    number_set_filter(&allowed, allow_miss(action))
}

/// A filter that allows the syscall numbers in `allowed` and answers `miss` to every other one
/// (and kills a foreign architecture), as a binary search over runs of consecutive numbers.
///
/// Hand-built because seccompiler compares numbers one after another: for this list that is
/// ~270 comparisons, and when the filter is installed the kernel runs it once for every
/// syscall number to fill its action cache, which made the install alone cost ~0.7 ms per
/// sandbox (bench/startup.py). A search over the ~45 runs takes at most ~10 steps.
fn number_set_filter(allowed: &BTreeSet<i64>, miss: u32) -> Result<BpfProgram, SeccompError> {
    let runs = runs_of(allowed.iter().copied())?;
    let mut program = vec![
        stmt(LD_W_ABS, 4),             // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH, 1, 0), // native: go on
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
    ];
    if runs.is_empty() {
        program.push(stmt(RET_K, miss));
    } else {
        program.extend(search(&runs, miss)?);
    }
    Ok(program)
}

/// Numbers in runs of consecutive ones, sorted.
fn runs_of(numbers: impl IntoIterator<Item = i64>) -> Result<Vec<(u32, u32)>, SeccompError> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for nr in numbers {
        let nr = u32::try_from(nr).map_err(|_| SeccompError::Compile(format!("syscall number {nr}")))?;
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == nr => *hi = nr,
            _ => runs.push((nr, nr)),
        }
    }
    Ok(runs)
}

/// What a number found by [`search`] gets.
#[derive(Clone, Copy)]
enum Hit {
    Allow,
    /// Go on after the search: an unconditional jump, patched by [`deny_prefix`] (its `k` is
    /// [`CONTINUE`] until then).
    Continue,
}

/// The placeholder of a [`Hit::Continue`] jump.
const CONTINUE: u32 = u32::MAX;

/// The search over `runs` (sorted, not empty), with the syscall number in the accumulator.
fn search(runs: &[(u32, u32)], miss: u32) -> Result<Vec<sock_filter>, SeccompError> {
    search_for(runs, Hit::Allow, miss)
}

fn search_for(runs: &[(u32, u32)], hit: Hit, miss: u32) -> Result<Vec<sock_filter>, SeccompError> {
    if let [(lo, hi)] = runs {
        return Ok(vec![
            jump(JGE_K, *lo, 0, 2), // below the run: miss
            jump(JGT_K, *hi, 1, 0), // above it: miss
            match hit {
                Hit::Allow => stmt(RET_K, libc::SECCOMP_RET_ALLOW),
                Hit::Continue => stmt(JA, CONTINUE),
            },
            stmt(RET_K, miss),
        ]);
    }
    let (below, from) = runs.split_at(runs.len() / 2);
    let below = search_for(below, hit, miss)?;
    let mut out = match u8::try_from(below.len()) {
        Ok(skip) => vec![jump(JGE_K, from[0].0, skip, 0)],
        // a conditional jump reaches 255 instructions; an unconditional one, any distance
        Err(_) => vec![jump(JGE_K, from[0].0, 0, 1), stmt(JA, below.len() as u32)],
    };
    out.extend(below);
    out.extend(search_for(from, hit, miss)?);
    Ok(out)
}

/// The head of a deny filter: a syscall number the filter names goes on to `rest` (the
/// filter itself, which checks the architecture and the arguments); any other is allowed at
/// once, by a binary search. The answers are the filter's own, since it allows every number it
/// does not name; but seccompiler compares numbers one after another, and the kernel runs a
/// new filter for every syscall number when it fills its action cache at install: without the
/// head, the kill list (~60 numbers, 321 instructions) cost ~0.2 ms of every sandbox's start.
fn with_deny_prefix(named: &BTreeSet<i64>, rest: BpfProgram) -> Result<BpfProgram, SeccompError> {
    let runs = runs_of(named.iter().copied())?;
    if runs.is_empty() {
        return Ok(rest);
    }
    let mut program = vec![
        stmt(LD_W_ABS, 4),             // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH, 1, 0), // native: go on
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
    ];
    program.extend(search_for(&runs, Hit::Continue, libc::SECCOMP_RET_ALLOW)?);
    let len = program.len();
    for (i, insn) in program.iter_mut().enumerate() {
        if insn.code == JA && insn.k == CONTINUE {
            insn.k = u32::try_from(len - i - 1).map_err(|_| SeccompError::Compile("deny prefix too long".into()))?;
        }
    }
    program.extend(rest);
    Ok(program)
}

fn deny_filters(file: &RulesFile, action: SeccompAction) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut by_action: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for entry in &file.deny {
        // errno 0 stands for "the policy's action"
        let errno = match &entry.errno {
            None => 0,
            Some(name) => constant(name)? as i32,
        };
        let rules = conditions(entry)?;
        for name in &entry.syscalls {
            let Some(nr) = number(name)? else { continue };
            // The same syscall in several entries: their rules are alternatives. An empty rule
            // list means "always", which alternatives would silently narrow: refuse that.
            match by_action.entry(errno).or_default().entry(nr) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(rules.clone());
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    if o.get().is_empty() || rules.is_empty() {
                        return Err(SeccompError::Duplicate(name.clone()));
                    }
                    o.get_mut().extend(rules.iter().cloned());
                }
            }
        }
    }
    let mut filters = Vec::new();
    for (errno, rules) in by_action {
        let act = match (errno, action) {
            // `log` only relaxes the allow list: the explicit denials are known attacks, not
            // calls an unfamiliar library might need, and they stay as under `kill`
            (0, SeccompAction::Kill | SeccompAction::Log) => Act::KillProcess,
            (0, SeccompAction::Errno) => Act::Errno(libc::EPERM as u32),
            (e, _) => Act::Errno(e as u32),
        };
        let named: BTreeSet<i64> = rules.keys().copied().collect();
        let filter =
            SeccompFilter::new(rules, Act::Allow, act, ARCH).map_err(|e| SeccompError::Compile(e.to_string()))?;
        let program: BpfProgram =
            filter.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
        filters.push(with_deny_prefix(&named, program)?);
    }
    Ok(filters)
}

/// A syscall name's number on this architecture: `None` for a name known only on x86_64
/// (the legacy calls aarch64 never had), an error for a name nobody knows.
fn number(name: &str) -> Result<Option<i64>, SeccompError> {
    match syscall_number(name) {
        Some(nr) => Ok(Some(nr)),
        None if !cfg!(target_arch = "x86_64") && X86_64_ONLY.contains(&name) => Ok(None),
        None => Err(SeccompError::UnknownSyscall(name.to_string())),
    }
}

fn conditions(entry: &Entry) -> Result<Vec<SeccompRule>, SeccompError> {
    let Some(arg) = entry.arg else {
        if !entry.any_bit.is_empty() || !entry.low32_in.is_empty() {
            return Err(SeccompError::Data(format!("{:?}: a condition needs `arg`", entry.syscalls)));
        }
        return Ok(vec![]); // unconditional
    };
    let mut rules = Vec::new();
    let cond = |arg, op, value| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| SeccompError::Compile(e.to_string()))
    };
    // Exceptions are added to every rule: deny when (condition) and not (any exception).
    let mut exceptions = Vec::new();
    if let Some(except) = entry.except_arg {
        for name in &entry.except_low32_in {
            exceptions.push(cond(except, SeccompCmpOp::Ne, constant(name)?)?);
        }
    }
    let rule = |c: SeccompCondition| {
        let mut all = vec![c];
        all.extend(exceptions.iter().cloned());
        SeccompRule::new(all).map_err(|e| SeccompError::Compile(e.to_string()))
    };
    // One rule per value: rules are alternatives, conditions within a rule are all required.
    for name in &entry.any_bit {
        let bit = constant(name)?;
        rules.push(rule(cond(arg, SeccompCmpOp::MaskedEq(bit), bit)?)?);
    }
    for name in &entry.low32_in {
        // Dword compares the low 32 bits only: TIOCSTI | 1 << 32 is still caught.
        rules.push(rule(cond(arg, SeccompCmpOp::Eq, constant(name)?)?)?);
    }
    if rules.is_empty() {
        return Err(SeccompError::Data(format!("{:?}: `arg` without a condition", entry.syscalls)));
    }
    Ok(rules)
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Kill any syscall made through another ABI: the i386 entry (`int 0x80`, arch mismatch) and,
/// on x86_64, x32 numbers (bit 30 set) that share the native arch value.
fn foreign_abi_filter() -> BpfProgram {
    #[cfg(target_arch = "x86_64")]
    let x32_bit = 0x4000_0000u32;
    #[cfg(target_arch = "aarch64")]
    let x32_bit = u32::MAX; // no x32-like ABI
    vec![
        stmt(LD_W_ABS, 4),             // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH, 0, 3), // not native: kill
        stmt(LD_W_ABS, 0),             // seccomp_data.nr
        jump(JGE_K, x32_bit, 1, 0),    // x32 number: kill
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

fn constant(name: &str) -> Result<u64, SeccompError> {
    let v: i64 = match name {
        "CLONE_NEWNS" => libc::CLONE_NEWNS.into(),
        "CLONE_NEWCGROUP" => libc::CLONE_NEWCGROUP.into(),
        "CLONE_NEWUTS" => libc::CLONE_NEWUTS.into(),
        "CLONE_NEWIPC" => libc::CLONE_NEWIPC.into(),
        "CLONE_NEWUSER" => libc::CLONE_NEWUSER.into(),
        "CLONE_NEWPID" => libc::CLONE_NEWPID.into(),
        "CLONE_NEWNET" => libc::CLONE_NEWNET.into(),
        "TIOCSTI" => libc::TIOCSTI as i64,
        "TIOCLINUX" => libc::TIOCLINUX as i64,
        "AF_NETLINK" => libc::AF_NETLINK.into(),
        "AF_PACKET" => libc::AF_PACKET.into(),
        "AF_VSOCK" => libc::AF_VSOCK.into(),
        "NETLINK_ROUTE" => libc::NETLINK_ROUTE.into(),
        "ENOSYS" => libc::ENOSYS.into(),
        "EPERM" => libc::EPERM.into(),
        "EAFNOSUPPORT" => libc::EAFNOSUPPORT.into(),
        _ => return Err(SeccompError::UnknownConstant(name.to_string())),
    };
    Ok(v as u64)
}

/// Syscalls of x86_64 that aarch64 does not have (the legacy path calls, `fork`, `poll`...), or
/// that this build's libc does not number there: skipped on other architectures.
const X86_64_ONLY: &[&str] = &[
    "iopl",
    "ioperm",
    "uselib",
    "dup2",
    "open",
    "creat",
    "stat",
    "lstat",
    "access",
    "getdents",
    "readlink",
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "renameat",
    "link",
    "symlink",
    "chmod",
    "fchmodat2",
    "chown",
    "lchown",
    "utime",
    "utimes",
    "futimesat",
    "mknod",
    "fork",
    "vfork",
    "arch_prctl",
    "getpgrp",
    "getrlimit",
    "setrlimit",
    "pause",
    "signalfd",
    "time",
    "alarm",
    "poll",
    "select",
    "epoll_create",
    "epoll_wait",
    "eventfd",
    "pipe",
];

/// Syscall numbers for the names the rules may use, on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    macro_rules! table {
        ($($(#[$attr:meta])* $name:literal => $nr:ident),* $(,)?) => {
            match name {
                $($(#[$attr])* $name => Some(libc::$nr),)*
                _ => None,
            }
        };
    }
    table!(
        "ptrace" => SYS_ptrace,
        "process_vm_readv" => SYS_process_vm_readv,
        "process_vm_writev" => SYS_process_vm_writev,
        "pidfd_getfd" => SYS_pidfd_getfd,
        "kcmp" => SYS_kcmp,
        "mount" => SYS_mount,
        "umount2" => SYS_umount2,
        "pivot_root" => SYS_pivot_root,
        "chroot" => SYS_chroot,
        "move_mount" => SYS_move_mount,
        "open_tree" => SYS_open_tree,
        "fsopen" => SYS_fsopen,
        "fsconfig" => SYS_fsconfig,
        "fsmount" => SYS_fsmount,
        "fspick" => SYS_fspick,
        "mount_setattr" => SYS_mount_setattr,
        "unshare" => SYS_unshare,
        "setns" => SYS_setns,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "keyctl" => SYS_keyctl,
        "add_key" => SYS_add_key,
        "request_key" => SYS_request_key,
        "bpf" => SYS_bpf,
        "perf_event_open" => SYS_perf_event_open,
        "userfaultfd" => SYS_userfaultfd,
        "io_uring_setup" => SYS_io_uring_setup,
        "io_uring_enter" => SYS_io_uring_enter,
        "io_uring_register" => SYS_io_uring_register,
        "kexec_load" => SYS_kexec_load,
        "kexec_file_load" => SYS_kexec_file_load,
        "init_module" => SYS_init_module,
        "finit_module" => SYS_finit_module,
        "delete_module" => SYS_delete_module,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "name_to_handle_at" => SYS_name_to_handle_at,
        "ioctl" => SYS_ioctl,
        "socket" => SYS_socket,
        "reboot" => SYS_reboot,
        "swapon" => SYS_swapon,
        "swapoff" => SYS_swapoff,
        "syslog" => SYS_syslog,
        "acct" => SYS_acct,
        "settimeofday" => SYS_settimeofday,
        "clock_settime" => SYS_clock_settime,
        "clock_adjtime" => SYS_clock_adjtime,
        "adjtimex" => SYS_adjtimex,
        "quotactl" => SYS_quotactl,
        "vhangup" => SYS_vhangup,
        "fanotify_init" => SYS_fanotify_init,
        "lookup_dcookie" => SYS_lookup_dcookie,
        "nfsservctl" => SYS_nfsservctl,
        "personality" => SYS_personality,
        "read" => SYS_read,
        "write" => SYS_write,
        "readv" => SYS_readv,
        "writev" => SYS_writev,
        "pread64" => SYS_pread64,
        "pwrite64" => SYS_pwrite64,
        "preadv" => SYS_preadv,
        "pwritev" => SYS_pwritev,
        "preadv2" => SYS_preadv2,
        "pwritev2" => SYS_pwritev2,
        "lseek" => SYS_lseek,
        "close" => SYS_close,
        "close_range" => SYS_close_range,
        "dup" => SYS_dup,
        "dup3" => SYS_dup3,
        "fcntl" => SYS_fcntl,
        "fadvise64" => SYS_fadvise64,
        "fsync" => SYS_fsync,
        "fdatasync" => SYS_fdatasync,
        "ftruncate" => SYS_ftruncate,
        "truncate" => SYS_truncate,
        "fallocate" => SYS_fallocate,
        "flock" => SYS_flock,
        "sendfile" => SYS_sendfile,
        "copy_file_range" => SYS_copy_file_range,
        "splice" => SYS_splice,
        "openat" => SYS_openat,
        "openat2" => SYS_openat2,
        "fstat" => SYS_fstat,
        "newfstatat" => SYS_newfstatat,
        "statx" => SYS_statx,
        "statfs" => SYS_statfs,
        "fstatfs" => SYS_fstatfs,
        "faccessat" => SYS_faccessat,
        "faccessat2" => SYS_faccessat2,
        "getdents64" => SYS_getdents64,
        "readlinkat" => SYS_readlinkat,
        "getcwd" => SYS_getcwd,
        "chdir" => SYS_chdir,
        "fchdir" => SYS_fchdir,
        "mkdirat" => SYS_mkdirat,
        "unlinkat" => SYS_unlinkat,
        "renameat2" => SYS_renameat2,
        "linkat" => SYS_linkat,
        "symlinkat" => SYS_symlinkat,
        "fchmod" => SYS_fchmod,
        "fchmodat" => SYS_fchmodat,
        "fchown" => SYS_fchown,
        "fchownat" => SYS_fchownat,
        "umask" => SYS_umask,
        "utimensat" => SYS_utimensat,
        "mknodat" => SYS_mknodat,
        "getxattr" => SYS_getxattr,
        "lgetxattr" => SYS_lgetxattr,
        "fgetxattr" => SYS_fgetxattr,
        "listxattr" => SYS_listxattr,
        "llistxattr" => SYS_llistxattr,
        "flistxattr" => SYS_flistxattr,
        "setxattr" => SYS_setxattr,
        "lsetxattr" => SYS_lsetxattr,
        "fsetxattr" => SYS_fsetxattr,
        "removexattr" => SYS_removexattr,
        "lremovexattr" => SYS_lremovexattr,
        "fremovexattr" => SYS_fremovexattr,
        "brk" => SYS_brk,
        "mmap" => SYS_mmap,
        "munmap" => SYS_munmap,
        "mprotect" => SYS_mprotect,
        "mremap" => SYS_mremap,
        "madvise" => SYS_madvise,
        "msync" => SYS_msync,
        "mbind" => SYS_mbind,
        "get_mempolicy" => SYS_get_mempolicy,
        "set_mempolicy" => SYS_set_mempolicy,
        "execve" => SYS_execve,
        "execveat" => SYS_execveat,
        "exit" => SYS_exit,
        "exit_group" => SYS_exit_group,
        "wait4" => SYS_wait4,
        "waitid" => SYS_waitid,
        "set_tid_address" => SYS_set_tid_address,
        "set_robust_list" => SYS_set_robust_list,
        "rseq" => SYS_rseq,
        "prctl" => SYS_prctl,
        "restart_syscall" => SYS_restart_syscall,
        "getpid" => SYS_getpid,
        "getppid" => SYS_getppid,
        "gettid" => SYS_gettid,
        "getuid" => SYS_getuid,
        "geteuid" => SYS_geteuid,
        "getgid" => SYS_getgid,
        "getegid" => SYS_getegid,
        "getresuid" => SYS_getresuid,
        "getresgid" => SYS_getresgid,
        "getgroups" => SYS_getgroups,
        "getpgid" => SYS_getpgid,
        "getsid" => SYS_getsid,
        "setsid" => SYS_setsid,
        "setpgid" => SYS_setpgid,
        "uname" => SYS_uname,
        "sysinfo" => SYS_sysinfo,
        "getrandom" => SYS_getrandom,
        "getcpu" => SYS_getcpu,
        "futex" => SYS_futex,
        "futex_waitv" => SYS_futex_waitv,
        "sched_yield" => SYS_sched_yield,
        "sched_getaffinity" => SYS_sched_getaffinity,
        "sched_setaffinity" => SYS_sched_setaffinity,
        "sched_getparam" => SYS_sched_getparam,
        "sched_setparam" => SYS_sched_setparam,
        "sched_getscheduler" => SYS_sched_getscheduler,
        "sched_setscheduler" => SYS_sched_setscheduler,
        "sched_get_priority_max" => SYS_sched_get_priority_max,
        "sched_get_priority_min" => SYS_sched_get_priority_min,
        "getpriority" => SYS_getpriority,
        "setpriority" => SYS_setpriority,
        "prlimit64" => SYS_prlimit64,
        "getrusage" => SYS_getrusage,
        "times" => SYS_times,
        "rt_sigaction" => SYS_rt_sigaction,
        "rt_sigprocmask" => SYS_rt_sigprocmask,
        "rt_sigreturn" => SYS_rt_sigreturn,
        "rt_sigsuspend" => SYS_rt_sigsuspend,
        "rt_sigpending" => SYS_rt_sigpending,
        "rt_sigtimedwait" => SYS_rt_sigtimedwait,
        "sigaltstack" => SYS_sigaltstack,
        "kill" => SYS_kill,
        "tgkill" => SYS_tgkill,
        "tkill" => SYS_tkill,
        "signalfd4" => SYS_signalfd4,
        "pidfd_open" => SYS_pidfd_open,
        "pidfd_send_signal" => SYS_pidfd_send_signal,
        "clock_gettime" => SYS_clock_gettime,
        "clock_getres" => SYS_clock_getres,
        "clock_nanosleep" => SYS_clock_nanosleep,
        "nanosleep" => SYS_nanosleep,
        "gettimeofday" => SYS_gettimeofday,
        "getitimer" => SYS_getitimer,
        "setitimer" => SYS_setitimer,
        "timer_create" => SYS_timer_create,
        "timer_settime" => SYS_timer_settime,
        "timer_gettime" => SYS_timer_gettime,
        "timer_getoverrun" => SYS_timer_getoverrun,
        "timer_delete" => SYS_timer_delete,
        "timerfd_create" => SYS_timerfd_create,
        "timerfd_settime" => SYS_timerfd_settime,
        "timerfd_gettime" => SYS_timerfd_gettime,
        "ppoll" => SYS_ppoll,
        "pselect6" => SYS_pselect6,
        "epoll_create1" => SYS_epoll_create1,
        "epoll_ctl" => SYS_epoll_ctl,
        "epoll_pwait" => SYS_epoll_pwait,
        "epoll_pwait2" => SYS_epoll_pwait2,
        "eventfd2" => SYS_eventfd2,
        "pipe2" => SYS_pipe2,
        "socketpair" => SYS_socketpair,
        "bind" => SYS_bind,
        "listen" => SYS_listen,
        "accept" => SYS_accept,
        "accept4" => SYS_accept4,
        "connect" => SYS_connect,
        "getsockname" => SYS_getsockname,
        "getpeername" => SYS_getpeername,
        "sendto" => SYS_sendto,
        "recvfrom" => SYS_recvfrom,
        "sendmsg" => SYS_sendmsg,
        "recvmsg" => SYS_recvmsg,
        "sendmmsg" => SYS_sendmmsg,
        "recvmmsg" => SYS_recvmmsg,
        "shutdown" => SYS_shutdown,
        "setsockopt" => SYS_setsockopt,
        "getsockopt" => SYS_getsockopt,
        #[cfg(target_arch = "x86_64")]
        "iopl" => SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => SYS_ioperm,
        #[cfg(target_arch = "x86_64")]
        "uselib" => SYS_uselib,
        #[cfg(target_arch = "x86_64")]
        "dup2" => SYS_dup2,
        #[cfg(target_arch = "x86_64")]
        "open" => SYS_open,
        #[cfg(target_arch = "x86_64")]
        "creat" => SYS_creat,
        #[cfg(target_arch = "x86_64")]
        "stat" => SYS_stat,
        #[cfg(target_arch = "x86_64")]
        "lstat" => SYS_lstat,
        #[cfg(target_arch = "x86_64")]
        "access" => SYS_access,
        #[cfg(target_arch = "x86_64")]
        "getdents" => SYS_getdents,
        #[cfg(target_arch = "x86_64")]
        "readlink" => SYS_readlink,
        #[cfg(target_arch = "x86_64")]
        "mkdir" => SYS_mkdir,
        #[cfg(target_arch = "x86_64")]
        "rmdir" => SYS_rmdir,
        #[cfg(target_arch = "x86_64")]
        "unlink" => SYS_unlink,
        #[cfg(target_arch = "x86_64")]
        "rename" => SYS_rename,
        #[cfg(target_arch = "x86_64")]
        "renameat" => SYS_renameat,
        #[cfg(target_arch = "x86_64")]
        "link" => SYS_link,
        #[cfg(target_arch = "x86_64")]
        "symlink" => SYS_symlink,
        #[cfg(target_arch = "x86_64")]
        "chmod" => SYS_chmod,
        #[cfg(target_arch = "x86_64")]
        "fchmodat2" => SYS_fchmodat2,
        #[cfg(target_arch = "x86_64")]
        "chown" => SYS_chown,
        #[cfg(target_arch = "x86_64")]
        "lchown" => SYS_lchown,
        #[cfg(target_arch = "x86_64")]
        "utime" => SYS_utime,
        #[cfg(target_arch = "x86_64")]
        "utimes" => SYS_utimes,
        #[cfg(target_arch = "x86_64")]
        "futimesat" => SYS_futimesat,
        #[cfg(target_arch = "x86_64")]
        "mknod" => SYS_mknod,
        #[cfg(target_arch = "x86_64")]
        "fork" => SYS_fork,
        #[cfg(target_arch = "x86_64")]
        "vfork" => SYS_vfork,
        #[cfg(target_arch = "x86_64")]
        "arch_prctl" => SYS_arch_prctl,
        #[cfg(target_arch = "x86_64")]
        "getpgrp" => SYS_getpgrp,
        #[cfg(target_arch = "x86_64")]
        "getrlimit" => SYS_getrlimit,
        #[cfg(target_arch = "x86_64")]
        "setrlimit" => SYS_setrlimit,
        #[cfg(target_arch = "x86_64")]
        "pause" => SYS_pause,
        #[cfg(target_arch = "x86_64")]
        "signalfd" => SYS_signalfd,
        #[cfg(target_arch = "x86_64")]
        "time" => SYS_time,
        #[cfg(target_arch = "x86_64")]
        "alarm" => SYS_alarm,
        #[cfg(target_arch = "x86_64")]
        "poll" => SYS_poll,
        #[cfg(target_arch = "x86_64")]
        "select" => SYS_select,
        #[cfg(target_arch = "x86_64")]
        "epoll_create" => SYS_epoll_create,
        #[cfg(target_arch = "x86_64")]
        "epoll_wait" => SYS_epoll_wait,
        #[cfg(target_arch = "x86_64")]
        "eventfd" => SYS_eventfd,
        #[cfg(target_arch = "x86_64")]
        "pipe" => SYS_pipe,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(seccomp_precompiled)]
    #[test]
    fn the_filters_compiled_at_build_time_are_the_rules_compiled_now() {
        for action in [SeccompAction::Kill, SeccompAction::Errno, SeccompAction::Log] {
            assert_eq!(precompiled(action).unwrap(), compile_rules(RULES, action).unwrap(), "{action:?}");
            assert_eq!(compile(action).unwrap(), compile_rules(RULES, action).unwrap(), "{action:?}");
        }
    }

    #[test]
    fn rules_compile_for_every_action() {
        for action in [SeccompAction::Kill, SeccompAction::Errno, SeccompAction::Log] {
            let f = compile(action).unwrap();
            // policy action, ENOSYS, EAFNOSUPPORT, foreign ABI, allow list
            assert_eq!(f.len(), 5);
            assert!(f.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
    }

    /// The return values a program can give (BPF_RET with a constant).
    fn returns(p: &BpfProgram) -> BTreeSet<u32> {
        p.iter().filter(|i| i.code == (libc::BPF_RET | libc::BPF_K) as u16).map(|i| i.k).collect()
    }

    #[test]
    fn an_allow_list_miss_is_enosys_or_logged() {
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        for action in [SeccompAction::Kill, SeccompAction::Errno] {
            let allow = returns(compile(action).unwrap().last().unwrap());
            assert!(allow.contains(&enosys) && !allow.contains(&libc::SECCOMP_RET_LOG), "{action:?}: {allow:x?}");
        }
        let allow = returns(compile(SeccompAction::Log).unwrap().last().unwrap());
        assert!(allow.contains(&libc::SECCOMP_RET_LOG) && !allow.contains(&enosys), "{allow:x?}");
        // under log the deny list still kills
        let deny = returns(&compile(SeccompAction::Log).unwrap()[0]);
        assert!(deny.contains(&libc::SECCOMP_RET_KILL_PROCESS), "{deny:x?}");
    }

    /// Runs a classic BPF program of the kinds built here on (arch, nr).
    fn eval(p: &BpfProgram, arch: u32, nr: u32) -> u32 {
        eval_counted(p, arch, nr).0
    }

    /// [`eval`], and how many instructions it ran.
    fn eval_counted(p: &BpfProgram, arch: u32, nr: u32) -> (u32, usize) {
        let (mut pc, mut acc) = (0usize, 0u32);
        for steps in 1.. {
            let i = &p[pc];
            pc += 1;
            let taken = match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        0 => nr,
                        4 => arch,
                        k => panic!("load of offset {k}"),
                    };
                    continue;
                }
                RET_K => return (i.k, steps),
                JA => {
                    pc += i.k as usize;
                    continue;
                }
                JEQ_K => acc == i.k,
                JGE_K => acc >= i.k,
                JGT_K => acc > i.k,
                c => panic!("instruction {c:#x}"),
            };
            pc += usize::from(if taken { i.jt } else { i.jf });
        }
        unreachable!()
    }

    #[test]
    fn a_deny_prefix_passes_on_exactly_the_named_numbers() {
        let rest: BpfProgram = vec![stmt(RET_K, 0xdead)];
        let sets: [&[i64]; 4] = [&[0], &[5, 6, 7], &[1, 3, 5, 7, 9, 11, 13], &[0, 2, 3, 4, 10, 11, 300, 301, 302, 450]];
        for set in sets {
            let set: BTreeSet<i64> = set.iter().copied().collect();
            let p = with_deny_prefix(&set, rest.clone()).unwrap();
            assert_eq!(p.last(), rest.last(), "the filter itself follows its head");
            for nr in (0..512u32).chain([0x4000_0000 | 5, u32::MAX]) {
                let want = if set.contains(&i64::from(nr)) { 0xdead } else { libc::SECCOMP_RET_ALLOW };
                assert_eq!(eval(&p, AUDIT_ARCH, nr), want, "{nr} in {set:?}");
            }
            assert_eq!(eval(&p, 0x4000_0003, 5), libc::SECCOMP_RET_KILL_PROCESS, "i386");
        }
        // more runs than a conditional jump reaches
        let many: BTreeSet<i64> = (0..500).step_by(2).collect();
        let p = with_deny_prefix(&many, rest.clone()).unwrap();
        assert!((0..500u32)
            .all(|nr| eval(&p, AUDIT_ARCH, nr) == if nr % 2 == 0 { 0xdead } else { libc::SECCOMP_RET_ALLOW }));
        assert_eq!(with_deny_prefix(&BTreeSet::new(), rest.clone()).unwrap(), rest);
    }

    #[test]
    fn the_deny_filters_allow_what_they_do_not_name_in_a_few_steps() {
        // The kernel runs each new filter for every syscall number at install (its action
        // cache): a linear chain of comparisons there cost ~0.2 ms of every sandbox's start.
        let file: RulesFile = toml::from_str(RULES).unwrap();
        let named: BTreeSet<u32> =
            file.deny.iter().flat_map(|e| &e.syscalls).filter_map(|n| syscall_number(n)).map(|nr| nr as u32).collect();
        for action in [SeccompAction::Kill, SeccompAction::Errno, SeccompAction::Log] {
            let filters = compile(action).unwrap();
            let deny = &filters[..filters.len() - 2];
            for p in deny {
                for nr in (0..512u32).filter(|nr| !named.contains(nr)) {
                    let (ret, steps) = eval_counted(p, AUDIT_ARCH, nr);
                    assert_eq!(ret, libc::SECCOMP_RET_ALLOW, "{action:?}: syscall {nr}");
                    assert!(steps <= 24, "{action:?}: syscall {nr} took {steps} instructions");
                }
            }
        }
    }

    #[test]
    fn the_allow_filter_allows_exactly_the_list() {
        let file: RulesFile = toml::from_str(RULES).unwrap();
        let mut expected: BTreeSet<u32> = BTreeSet::new();
        let names = file.allow.iter().flat_map(|g| &g.syscalls);
        // the unconditional denials are passed on to the deny filter
        let denied = file.deny.iter().filter(|e| e.arg.is_none()).flat_map(|e| &e.syscalls);
        for name in names.chain(denied) {
            expected.extend(syscall_number(name).map(|nr| nr as u32));
        }
        let miss = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let p = compile(SeccompAction::Kill).unwrap().pop().unwrap();
        for nr in (0..1024).chain([0x4000_0000 | 39, u32::MAX]) {
            let want = if expected.contains(&nr) { libc::SECCOMP_RET_ALLOW } else { miss };
            assert_eq!(eval(&p, AUDIT_ARCH, nr), want, "syscall {nr}");
        }
        assert_eq!(eval(&p, 0x4000_0003, 20), libc::SECCOMP_RET_KILL_PROCESS, "i386");
        assert!(p.len() < 256, "{} instructions", p.len());
    }

    #[test]
    fn number_set_filters_search_right() {
        let sets: [&[i64]; 6] =
            [&[], &[0], &[5], &[0, 1, 2, 3], &[1, 3, 5, 7, 9, 11, 13], &[0, 2, 3, 4, 10, 11, 300, 301, 302, 450]];
        for set in sets {
            let set: BTreeSet<i64> = set.iter().copied().collect();
            let p = number_set_filter(&set, 7).unwrap();
            for nr in 0..512u32 {
                let want = if set.contains(&i64::from(nr)) { libc::SECCOMP_RET_ALLOW } else { 7 };
                assert_eq!(eval(&p, AUDIT_ARCH, nr), want, "{nr} in {set:?}");
            }
        }
        // every other number, up to the kernel's: 250 runs, more than a conditional jump reaches
        let many: BTreeSet<i64> = (0..500).step_by(2).collect();
        let p = number_set_filter(&many, 7).unwrap();
        assert!((0..500u32).all(|nr| eval(&p, AUDIT_ARCH, nr) == if nr % 2 == 0 { libc::SECCOMP_RET_ALLOW } else { 7 }));
    }

    const DENY_PTRACE: &str = "[[deny]]\nsyscalls = [\"ptrace\"]\nreason = \"trace another process\"\n";
    const DENY_CLONE_NEWUSER: &str =
        "[[deny]]\nsyscalls = [\"clone\"]\narg = 0\nany_bit = [\"CLONE_NEWUSER\"]\nreason = \"namespaces\"\n";

    fn allow(groups: &[&[&str]]) -> String {
        groups
            .iter()
            .map(|g| format!("[[allow]]\nsyscalls = {g:?}\nreason = \"a test group\"\n"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn rules(allow_groups: &[&[&str]]) -> Result<Vec<BpfProgram>, SeccompError> {
        compile_rules(&format!("{DENY_PTRACE}{DENY_CLONE_NEWUSER}{}", allow(allow_groups)), SeccompAction::Kill)
    }

    #[test]
    fn allow_data_is_validated() {
        assert!(rules(&[&["read", "write"], &["clone"]]).is_ok());
        // a syscall nobody knows
        assert!(matches!(rules(&[&["read", "reed"]]), Err(SeccompError::UnknownSyscall(n)) if n == "reed"));
        // the same name in two groups (which reason holds?), or twice in one
        assert!(matches!(rules(&[&["read"], &["write", "read"]]), Err(SeccompError::AllowedTwice(n)) if n == "read"));
        assert!(matches!(rules(&[&["read", "read"]]), Err(SeccompError::AllowedTwice(n)) if n == "read"));
        // allowed and denied unconditionally: one of the two is a mistake
        assert!(matches!(rules(&[&["read", "ptrace"]]), Err(SeccompError::Contradiction(n)) if n == "ptrace"));
        // allowed and denied with conditions: the deny entry narrows it (clone above)
        // an empty group, a group without a reason, an unknown key
        assert!(matches!(rules(&[&[]]), Err(SeccompError::Data(_))));
        let no_reason = format!("{DENY_PTRACE}[[allow]]\nsyscalls = [\"read\"]\n");
        assert!(matches!(compile_rules(&no_reason, SeccompAction::Kill), Err(SeccompError::Data(_))));
        let extra = format!("{DENY_PTRACE}{}errno = \"EPERM\"\n", allow(&[&["read"]]));
        assert!(matches!(compile_rules(&extra, SeccompAction::Kill), Err(SeccompError::Data(_))));
    }

    #[test]
    fn the_allow_list_has_reasons_and_leaves_out_the_dangerous() {
        let file: RulesFile = toml::from_str(RULES).unwrap();
        let allowed: Vec<&str> = file.allow.iter().flat_map(|g| g.syscalls.iter().map(String::as_str)).collect();
        for g in &file.allow {
            assert!(g.reason.len() > 10, "{:?} needs a reason", g.syscalls);
        }
        // what the workloads need (README.md "Seccomp" says how the list was traced)
        for must in ["execve", "clone", "futex", "mmap", "openat", "epoll_wait", "socket", "ioctl", "rseq", "mbind"] {
            assert!(allowed.contains(&must), "{must} is not allowed");
        }
        // dangerous and not needed: not allowed, whether or not the deny list names them
        for never in [
            "keyctl",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "kexec_load",
            "mount",
            "ptrace",
            "add_key",
            "init_module",
            "swapon",
            "reboot",
            "acct",
            "settimeofday",
            "clone3",
            "seccomp",
            "memfd_secret",
            "process_madvise",
            "move_pages",
            "migrate_pages",
            "sysfs",
        ] {
            assert!(!allowed.contains(&never), "{never} is allowed");
        }
    }

    #[test]
    fn every_entry_has_a_reason_and_known_names() {
        let file: RulesFile = toml::from_str(RULES).unwrap();
        for e in &file.deny {
            assert!(e.reason.len() > 10, "{:?} needs a reason", e.syscalls);
            for s in &e.syscalls {
                assert!(syscall_number(s).is_some(), "{s}");
            }
        }
        for must in [
            "ptrace",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "userfaultfd",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "ioctl",
            "socket",
        ] {
            assert!(
                file.deny.iter().any(|e| e.syscalls.iter().any(|s| s == must)),
                "{must} missing from the deny list"
            );
        }
    }
}
