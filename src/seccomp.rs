//! The seccomp filters, compiled with seccompiler from the deny list in
//! `policies/seccomp.toml` (data, with a reason per entry), plus a small hand-written filter
//! that kills every non-native syscall ABI.
//!
//! Filters are compiled in the supervisor, before any privileged step, and installed by the
//! sandbox as the very last step before `execve`, so they only have to allow the program.
//!
//! ```
//! use isolate_grade::{policy::SeccompAction, seccomp};
//! let filters = seccomp::compile(SeccompAction::Kill).unwrap();
//! assert!(filters.len() >= 2);
//! ```

use crate::policy::SeccompAction;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction as Act, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const DENY_LIST: &str = include_str!("../policies/seccomp.toml");

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
    #[error("compiling the filter: {0}")]
    Compile(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyFile {
    deny: Vec<Entry>,
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

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Compile the deny list: one filter per action (seccompiler gives a filter one match
/// action), then the ABI filter. The kernel runs them all; the strictest result wins.
pub fn compile(action: SeccompAction) -> Result<Vec<BpfProgram>, SeccompError> {
    let file: DenyFile = toml::from_str(DENY_LIST).map_err(|e| SeccompError::Data(e.to_string()))?;
    let mut by_action: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for entry in &file.deny {
        // errno 0 stands for "the policy's action"
        let errno = match &entry.errno {
            None => 0,
            Some(name) => constant(name)? as i32,
        };
        let rules = conditions(entry)?;
        for name in &entry.syscalls {
            let nr = syscall_number(name).ok_or_else(|| SeccompError::UnknownSyscall(name.clone()))?;
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
            (0, SeccompAction::Kill) => Act::KillProcess,
            (0, SeccompAction::Errno) => Act::Errno(libc::EPERM as u32),
            (e, _) => Act::Errno(e as u32),
        };
        let filter =
            SeccompFilter::new(rules, Act::Allow, act, ARCH).map_err(|e| SeccompError::Compile(e.to_string()))?;
        filters.push(filter.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?);
    }
    filters.push(foreign_abi_filter());
    Ok(filters)
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

/// Kill any syscall made through another ABI: the i386 entry (`int 0x80`, arch mismatch) and,
/// on x86_64, x32 numbers (bit 30 set) that share the native arch value.
fn foreign_abi_filter() -> BpfProgram {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    #[cfg(target_arch = "x86_64")]
    let (arch, x32_bit) = (0xC000_003E_u32, 0x4000_0000u32); // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    let (arch, x32_bit) = (0xC000_00B7_u32, u32::MAX); // AUDIT_ARCH_AARCH64, no x32-like ABI
    vec![
        stmt(LD_W_ABS, 4),          // seccomp_data.arch
        jump(JEQ_K, arch, 0, 3),    // not native: kill
        stmt(LD_W_ABS, 0),          // seccomp_data.nr
        jump(JGE_K, x32_bit, 1, 0), // x32 number: kill
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

/// Syscall numbers for the names the deny list may use.
pub fn syscall_number(name: &str) -> Option<i64> {
    macro_rules! table {
        ($($name:literal => $nr:ident),* $(,)?) => {
            match name {
                $($name => Some(libc::$nr),)*
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
        "iopl" => SYS_iopl,
        "ioperm" => SYS_ioperm,
        "vhangup" => SYS_vhangup,
        "uselib" => SYS_uselib,
        "fanotify_init" => SYS_fanotify_init,
        "lookup_dcookie" => SYS_lookup_dcookie,
        "nfsservctl" => SYS_nfsservctl,
        "personality" => SYS_personality,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_list_compiles_for_both_actions() {
        for action in [SeccompAction::Kill, SeccompAction::Errno] {
            let f = compile(action).unwrap();
            // policy action, ENOSYS, EAFNOSUPPORT, foreign ABI
            assert_eq!(f.len(), 4);
            assert!(f.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
    }

    #[test]
    fn every_entry_has_a_reason_and_known_names() {
        let file: DenyFile = toml::from_str(DENY_LIST).unwrap();
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
