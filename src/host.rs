//! THE host side of a sandboxed run, in order, in one function: [`run`]. The sandbox's own
//! steps are [`crate::plan::enter_sandbox`]; this is everything around them, in the
//! supervising process, which is root (or, rootless, the caller: [`crate::userns`]) and
//! single-threaded until the clone.
//!
//! Before [`run`], as the caller and without privilege in effect: the process sanitized itself
//! at start (`main.rs`: fds 0-2 open, every inherited fd close-on-exec, not dumpable, the
//! relayed signals blocked), and the request was validated and every path it names opened
//! with the caller's credentials ([`crate::request`]). A fault from here on is the sandbox's or
//! the host's, never the caller's: [`run`] always returns a report.

use crate::cgroup::{delegation, CgroupLimits, Hierarchies, RunCgroup};
use crate::fault::{Fault, HostStep};
use crate::plan::Outside;
use crate::policy::LimitsMode;
use crate::report::Report;
use crate::request::Request;
use crate::slot;
use crate::supervisor;
use crate::userns::{self, Mode};
use nix::unistd::{getgid, getuid};
use std::path::Path;
use std::time::Instant;

/// Run a validated request in a slot of its own and report.
pub fn run(req: Request) -> Report {
    let started = Instant::now();
    let mut info = req.info();
    let limits = req.policy.limits.clone();
    match steps(req, &mut info) {
        Ok(outcome) => match outcome.setup_failure {
            Some(f) => {
                let f = explained(f, &info);
                Report::fault(f, &limits, info, outcome.facts.wall)
            }
            None => Report::from_facts(&outcome.facts, &limits, info),
        },
        Err(fault) => Report::fault(fault, &limits, info, started.elapsed()),
    }
}

/// A sandbox fault whose cause the caller can't guess from the errno, said in words: in
/// rootless mode, a fresh procfs refused (EPERM) means the caller's own `/proc` has masked
/// or read-only paths, as a container runtime leaves it (the kernel's "too revealing" check).
fn explained(mut f: Fault, info: &crate::report::SandboxInfo) -> Fault {
    let rootless = info.mode == Some(Mode::Rootless);
    if rootless
        && f.step == crate::fault::Step::Sandbox(crate::plan::Step::Proc)
        && f.errno == Some(nix::errno::Errno::EPERM)
    {
        f.context +=
            " (rootless: the kernel refuses a fresh procfs in a user namespace while this /proc has masked or \
                      read-only paths, as a container runtime leaves it; set proc = \"none\" in the policy's [sandbox] \
                      table to run without /proc (ipykernel runs without it; psutil's process and memory queries fail), \
                      or run the privileged helper on a grading host, or the Kubernetes Job, or ask the admin for an \
                      unmasked /proc in this container)";
    }
    f
}

fn steps(req: Request, info: &mut crate::report::SandboxInfo) -> Result<supervisor::Outcome, Fault> {
    let config = &req.config;
    // 1. The mode, from what we hold, before anything is made: privileged with CAP_SYS_ADMIN
    //    in the host's user namespace; otherwise rootless, the sandbox in a user namespace of
    //    its own mapping its one uid to the caller. A setuid or sudo install without that
    //    capability (a container's) is refused: it would be root in name only.
    let mode = userns::choose();
    info.mode = Some(mode.mode);
    let rootless = match mode.mode {
        Mode::Privileged => None,
        Mode::Rootless if req.caller.trusted() => Some(Outside { uid: getuid().as_raw(), gid: getgid().as_raw() }),
        Mode::Rootless => return Err(Fault::text(HostStep::Mode, setuid_without_privilege(&mode))),
    };
    // 2. The state directory, before anything is created in it: it holds the slot locks and
    //    the empty directory each new root is mounted on. Root's, writable by nobody else; in
    //    rootless mode the caller's own, open to nobody else.
    let (state_dir, owner) = match rootless {
        None => (config.state_dir.clone(), 0),
        Some(o) => (slot::rootless_state_dir(o.uid), o.uid),
    };
    let root_dir = slot::prepare_state_dir(&state_dir, owner).map_err(|e| Fault::text(HostStep::StateDir, e))?;
    // 3. A slot: the lowest free lock, held until the run has ended. Its index is the run's
    //    own uid and cgroup name, so two runs never share either, and a caller can't choose it.
    //    (Rootless, the uid is the sandbox's own inside its user namespace, the caller's on
    //    the host.)
    let slot = slot::acquire_slot(&state_dir, config.slots).map_err(|e| Fault::text(HostStep::Slot, e))?;
    let uid = config.slot_uid(slot.index);
    (info.slot, info.uid) = (Some(slot.index), Some(uid));
    // 4. The run's cgroup with its memory, pids and CPU limits, before the sandbox exists:
    //    on v2 it is born inside it (clone3), on v1 joining it is the sandbox's first step, so
    //    nothing of the student's ever runs unlimited. Rootless, it is made in the cgroup v2
    //    subtree delegated to the caller (cgroup::delegation); without one, the run is
    //    refused unless the policy accepts best-effort limits, and then the report says
    //    which are not enforced.
    let l = &req.policy.limits;
    let cg_limits = CgroupLimits { memory: l.memory, pids: l.pids, cpu_millicores: l.cpu_quota_millicores };
    let cgroup = match rootless {
        None => {
            let backend = Hierarchies::read(Path::new("/proc/self/mountinfo"))
                .and_then(|h| h.choose())
                .map_err(|e| Fault::text(HostStep::Cgroup, e))?;
            RunCgroup::create(&backend, &config.cgroup_root, slot.index, cg_limits)
                .map_err(|e| Fault::text(HostStep::Cgroup, e))?
        }
        Some(o) => match rootless_cgroup(config, o.uid, slot.index, cg_limits) {
            Ok(c) => c,
            Err(e) if req.policy.limits_mode == LimitsMode::BestEffort => {
                tracing::warn!(error = %e, "best-effort limits: running without a cgroup");
                // what the report must own up to (rlimits, wall time and total CPU time hold)
                info.not_enforced = vec!["memory", "pids", "cpu_quota"];
                RunCgroup::Absent
            }
            Err(e) => return Err(Fault::text(HostStep::Cgroup, format!("{e}; {ROOTLESS_LIMITS}"))),
        },
    };
    info.cgroup = Some(cgroup.version());
    let join = cgroup.join_files().map_err(|e| Fault::text(HostStep::Cgroup, e))?;
    tracing::debug!(slot = slot.index, uid, cgroup = cgroup.version(), mode = mode.mode.as_str(), "cgroup ready");
    // 5. The sandbox's plan, for this slot's uid and cgroup, from the request: made in one
    //    place (Request::into_plan), with its Landlock rules derived from its mounts.
    let (plan, kept) = req.into_plan(root_dir, uid, join, rootless);
    // 6. clone3 into new mount, PID, network, IPC and UTS namespaces (supervisor::NAMESPACES;
    //    the cgroup namespace comes from inside, once it is in its cgroup; rootless, a user
    //    namespace first, which the sandbox maps itself), with every relayed signal
    //    blocked so none is lost; then, and only then, threads: a kernel's relay of its five
    //    channels and the stdio pumps. Then wait, enforcing wall and CPU time, relaying
    //    signals, ending the sandbox with its client; reap.
    let outcome = supervisor::supervise(supervisor::Supervision {
        plan,
        cgroup,
        limits: kept.limits,
        relay: kept.relay,
        watch: kept.watch,
        stdio: kept.stdio,
    })?;
    // 7. The slot is released last, once nothing of the run is left (supervise killed what
    //    remained in the cgroup, read its counters and removed it): only then may the next
    //    run take its uid.
    drop(slot);
    Ok(outcome)
}

/// Rootless: the run's cgroup in the subtree delegated to the caller, if there is one.
fn rootless_cgroup(
    config: &crate::config::Config,
    uid: u32,
    slot: u32,
    limits: CgroupLimits,
) -> Result<RunCgroup, crate::cgroup::CgroupError> {
    let h = Hierarchies::read(Path::new("/proc/self/mountinfo"))?;
    let own = crate::cgroup::read(Path::new("/proc/self/cgroup"))?;
    let d = delegation::find(&h, config.rootless_cgroup_root.as_deref(), &own, uid)?;
    tracing::debug!(dir = %d.dir.display(), source = d.source.as_str(), "delegated cgroup");
    RunCgroup::create_delegated(&d, slot, limits)
}

/// What a rootless run of a policy with required limits, refused for want of a delegated
/// cgroup, can do instead.
pub const ROOTLESS_LIMITS: &str = "the policy's memory, pids and CPU limits need one: run the server in a cgroup \
     delegated to you (systemd: systemd-run --user -p Delegate=yes ...; a container runtime that delegates the \
     container's cgroup), or have the admin chown a cgroup v2 subtree (with its cgroup.procs and \
     cgroup.subtree_control) to you, start the server inside it and name it rootless_cgroup_root in the config; or set \
     limits = \"best-effort\" in the policy's [sandbox] table to run with rlimits and the wall-clock limit only (the \
     report lists what was not enforced); or run the privileged helper (as root, through sudo, or installed setuid) on \
     a host that grants it CAP_SYS_ADMIN";

fn setuid_without_privilege(mode: &userns::Choice) -> String {
    format!(
        "installed setuid-root or run through sudo, but {}: the privileged helper can't build a sandbox here (a \
         container's runtime dropped the capability); run the binary as an ordinary program (not setuid) for rootless \
         mode, or on a host that grants it",
        mode.why
    )
}

#[cfg(test)]
pub(crate) mod tests {
    /// The numbered `// N. text` comments of a function body (a step's text continues on
    /// `//    ` lines), as `N. text` lines: the README lists them.
    pub(crate) fn numbered_steps(body: &str) -> Vec<String> {
        let mut steps: Vec<String> = Vec::new();
        let mut continuing = false;
        for line in body.lines().map(str::trim) {
            let numbered = line
                .strip_prefix("// ")
                .and_then(|l| l.split_once(". "))
                .filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty());
            if let Some((n, text)) = numbered {
                assert_eq!(n.parse::<usize>().unwrap(), steps.len() + 1, "steps must be numbered 1, 2, 3...");
                steps.push(format!("{n}. {text}"));
                continuing = true;
            } else if let (true, Some(more)) = (continuing, line.strip_prefix("//    ")) {
                let last = steps.last_mut().unwrap();
                last.push(' ');
                last.push_str(more.trim());
            } else {
                continuing = false;
            }
        }
        steps
    }

    /// The README's list between `<!-- {marker}:begin -->` and `<!-- {marker}:end -->`.
    pub(crate) fn readme_list(marker: &str) -> &'static str {
        let readme = include_str!("../README.md");
        let (b, e) = (format!("<!-- {marker}:begin -->\n"), format!("\n<!-- {marker}:end -->"));
        let begin = readme.find(&b).expect("README marker") + b.len();
        &readme[begin..readme.find(&e).expect("README marker")]
    }

    #[test]
    fn readme_lists_the_host_steps_of_the_code() {
        let src = include_str!("host.rs");
        let body = &src[src.find("fn steps(").unwrap()..src.find("#[cfg(test)]").unwrap()];
        let expected = numbered_steps(body).join("\n");
        assert_eq!(readme_list("host"), expected, "update README.md's list of host steps to:\n{expected}");
    }
}
