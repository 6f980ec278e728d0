//! Landlock, on top of the mount tree: even if a mount were wrong, the program can only
//! write where the policy says (`/tmp`, `/dev/shm`, writable binds) and read the rest.
//! Where the kernel supports them (ABI 6), abstract Unix sockets and signals are scoped to the
//! sandbox as well. This applies the rules and says what the kernel enforced; whether that is
//! enough for the policy is the plan's to decide ([`crate::plan::landlock_enough`]).

use super::{LandlockOutcome, LandlockRules, SysError};
use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use nix::errno::Errno;

/// The newest ABI we know; the crate degrades to what the kernel has (best effort).
const ABI_WANTED: ABI = ABI::V6;

/// The ABI this kernel offers (0: none).
pub fn kernel_abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version; no memory is passed.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// Apply `rules` to this thread (the only one), as much as the kernel supports.
pub fn restrict_self(rules: &LandlockRules) -> Result<LandlockOutcome, SysError> {
    let e = |what: &str, err: &dyn std::fmt::Display| SysError::new("landlock", format!("{what}: {err}"), Errno::EPERM);
    let abi = ABI_WANTED;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|x| e("handle_access", &x))?
        .scope(Scope::from_all(abi))
        .map_err(|x| e("scope", &x))?
        .create()
        .map_err(|x| e("create", &x))?
        .add_rules(path_beneath_rules(&rules.read, AccessFs::from_read(abi)))
        .map_err(|x| e("read rules", &x))?
        .add_rules(path_beneath_rules(&rules.write, AccessFs::from_all(abi)))
        .map_err(|x| e("write rules", &x))?
        .add_rules(path_beneath_rules(&rules.write_files, AccessFs::from_file(abi)))
        .map_err(|x| e("file rules", &x))?
        .restrict_self()
        .map_err(|x| e("restrict_self", &x))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockOutcome::Full,
        RulesetStatus::PartiallyEnforced => LandlockOutcome::Partial,
        RulesetStatus::NotEnforced => LandlockOutcome::Unsupported,
    })
}
