//! THE host side of a sandboxed run, in order, in one function: [`run`]. The sandbox's own
//! steps are [`crate::plan::enter_sandbox`]; this is everything around them, in the
//! supervising process, which is root and single-threaded until the clone.
//!
//! Before [`run`], as the caller and without privilege in effect: the process sanitized itself
//! at start (`main.rs`: fds 0-2 open, every inherited fd close-on-exec, not dumpable, the
//! relayed signals blocked), and the request was validated and every path it names opened
//! with the caller's credentials ([`crate::request`]). A fault from here on is the sandbox's or
//! the host's, never the caller's: [`run`] always returns a report.

use crate::cgroup::{CgroupLimits, Hierarchies, RunCgroup};
use crate::fault::{Fault, HostStep};
use crate::report::Report;
use crate::request::Request;
use crate::slot;
use crate::supervisor;
use std::path::Path;
use std::time::Instant;

/// Run a validated request in a slot of its own and report.
pub fn run(req: Request) -> Report {
    let started = Instant::now();
    let mut info = req.info();
    let limits = req.policy.limits.clone();
    match steps(req, &mut info) {
        Ok(outcome) => match outcome.setup_failure {
            Some(f) => Report::fault(f, &limits, info, outcome.facts.wall),
            None => Report::from_facts(&outcome.facts, &limits, info),
        },
        Err(fault) => Report::fault(fault, &limits, info, started.elapsed()),
    }
}

fn steps(req: Request, info: &mut crate::report::SandboxInfo) -> Result<supervisor::Outcome, Fault> {
    let config = &req.config;
    // 1. The state directory, root-owned and writable by nobody else, before anything is
    //    created in it: it holds the slot locks and the empty directory each new root is
    //    mounted on.
    let root_dir = slot::prepare_state_dir(&config.state_dir).map_err(|e| Fault::text(HostStep::StateDir, e))?;
    // 2. A slot: the lowest free lock, held until the run has ended. Its index is the run's
    //    own uid and cgroup name, so two runs never share either, and a caller can't choose it.
    let slot = slot::acquire_slot(&config.state_dir, config.slots).map_err(|e| Fault::text(HostStep::Slot, e))?;
    let uid = config.slot_uid(slot.index);
    (info.slot, info.uid) = (Some(slot.index), Some(uid));
    // 3. The run's cgroup with its memory, pids and CPU limits, before the sandbox exists:
    //    on v2 it is born inside it (clone3), on v1 joining it is the sandbox's first step, so
    //    nothing of the student's ever runs unlimited.
    let backend = Hierarchies::read(Path::new("/proc/self/mountinfo"))
        .and_then(|h| h.choose())
        .map_err(|e| Fault::text(HostStep::Cgroup, e))?;
    let l = &req.policy.limits;
    let cg_limits = CgroupLimits { memory: l.memory, pids: l.pids, cpu_millicores: l.cpu_quota_millicores };
    let cgroup = RunCgroup::create(&backend, &config.cgroup_root, slot.index, cg_limits)
        .map_err(|e| Fault::text(HostStep::Cgroup, e))?;
    info.cgroup = Some(cgroup.version());
    let join = cgroup.join_files().map_err(|e| Fault::text(HostStep::Cgroup, e))?;
    tracing::debug!(slot = slot.index, uid, cgroup = cgroup.version(), "cgroup ready");
    // 4. The sandbox's plan, for this slot's uid and cgroup, from the request: made in one
    //    place (Request::into_plan), with its Landlock rules derived from its mounts.
    let (plan, kept) = req.into_plan(root_dir, uid, join);
    // 5. clone3 into new mount, PID, network, IPC and UTS namespaces (supervisor::NAMESPACES;
    //    the cgroup namespace comes from inside, once it is in its cgroup), with every relayed signal
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
    // 6. The slot is released last, once nothing of the run is left (supervise killed what
    //    remained in the cgroup, read its counters and removed it): only then may the next
    //    run take its uid.
    drop(slot);
    Ok(outcome)
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
