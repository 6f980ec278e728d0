//! `isolate-grade check`: what this host offers the sandbox, and whether it can run here.

use crate::cgroup::Hierarchies;
use crate::cli::{CheckArgs, Format};
use crate::config::Config;
use crate::exit::CheckExit;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Item {
    pub name: &'static str,
    /// false: the sandbox cannot run here.
    pub ok: bool,
    /// Runs, but something needs attention.
    pub warn: bool,
    pub detail: String,
}

/// Returns the exit code: ready when every required item is fine, usage when an untrusted
/// caller names a config (it would be read, and partly printed, as root).
pub fn check(config_path: Option<&Path>, args: &CheckArgs) -> CheckExit {
    let format = args.format;
    let caller = crate::identity::Caller::detect();
    let path = match caller.config_path(config_path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("isolate-grade: {e}");
            return CheckExit::Usage;
        }
    };
    let mut items = Vec::new();
    let mut insecure_config = false;
    let mut no_delegation = false;
    let mut add = |name, ok, detail: String| items.push(Item { name, ok, warn: false, detail });

    // The mode, and whether a user namespace could hold the sandbox: rootless mode needs it,
    // and an admin deciding between the modes wants to know (the probe forks: no thread yet).
    let choice = crate::userns::choose();
    let probe = crate::userns::probe();
    let privileged = choice.mode == crate::userns::Mode::Privileged;
    add(
        "mode",
        privileged || probe.userns.is_ok(),
        match choice.mode {
            crate::userns::Mode::Privileged => format!("privileged: {}", choice.why),
            crate::userns::Mode::Rootless => format!(
                "rootless: {}; the sandbox is built in a user namespace that maps its uid to yours. Its memory, \
                 pids and CPU limits need a cgroup v2 subtree delegated to you (see cgroup-delegation); without \
                 one, only policies with [sandbox] limits = \"best-effort\" run, without memory and pids caps. \
                 run, kernel, install and the batch all work rootless",
                choice.why
            ),
        },
    );
    add(
        "user-namespaces",
        privileged || probe.userns.is_ok(),
        match &probe.userns {
            Ok(()) => "an unprivileged user namespace with its own mounts can be made here".into(),
            Err(f) if privileged => format!("{f} (not needed in privileged mode)"),
            Err(f) => format!("{f}: {}", crate::userns::ALTERNATIVES),
        },
    );
    add(
        "userns-procfs",
        true,
        match (&probe.userns, probe.proc) {
            (Ok(()), Ok(())) => "a fresh procfs can be mounted in one".into(),
            (Ok(()), Err(e)) => format!(
                "a fresh procfs cannot be mounted in one ({e}): this /proc has masked or read-only paths, as a \
                 container's has; a policy with proc = \"none\" runs without /proc"
            ),
            (Err(_), _) => "not tried (no user namespace)".into(),
        },
    );
    let exe = std::fs::metadata("/proc/self/exe").ok();
    let setuid = exe.as_ref().is_some_and(|m| m.mode() & 0o4000 != 0 && m.uid() == 0);
    add(
        "setuid",
        true,
        if setuid { "installed setuid-root".into() } else { "not setuid (fine when run as root or via sudo)".into() },
    );

    let ns: Vec<&str> = ["mnt", "pid", "net", "ipc", "uts", "cgroup"]
        .into_iter()
        .filter(|n| Path::new(&format!("/proc/self/ns/{n}")).exists())
        .collect();
    add("namespaces", ns.len() == 6, format!("available: {}", ns.join(", ")));

    let mut backend = None;
    match Hierarchies::read(Path::new("/proc/self/mountinfo")) {
        Ok(h) => {
            backend = h.choose().ok();
            let v2 = match &h.v2 {
                Some(m) => format!("v2 at {} with {:?}", m.display(), h.v2_controllers()),
                None => "no v2".into(),
            };
            let v1: Vec<_> = h.v1.keys().cloned().collect();
            match h.choose() {
                Ok(b) => add(
                    "cgroups",
                    true,
                    format!(
                        "using {}; {v2}; v1 controllers {v1:?}",
                        match b {
                            crate::cgroup::Backend::V2 { .. } => "v2",
                            _ => "v1",
                        }
                    ),
                ),
                Err(e) => add("cgroups", false, e.to_string()),
            }
        }
        Err(e) => add("cgroups", false, e.to_string()),
    }

    let seccomp = std::fs::read_to_string("/proc/self/status").map(|s| s.contains("Seccomp:")).unwrap_or(false);
    add("seccomp", seccomp, if seccomp { "filter mode available".into() } else { "the kernel has no seccomp".into() });
    match crate::seccomp::compile(crate::policy::SeccompAction::Kill) {
        Ok(f) => add("seccomp-policy", true, format!("{} filters compiled from policies/seccomp.toml", f.len())),
        Err(e) => add("seccomp-policy", false, e.to_string()),
    }
    let abi = crate::sys::landlock::kernel_abi();
    add(
        "landlock",
        true,
        if abi > 0 {
            format!("ABI {abi}")
        } else {
            "not supported by this kernel (policies with landlock = \"required\" will refuse)".into()
        },
    );

    let path = path.as_path();
    match Config::load(path, false) {
        Ok(c) => {
            let from = c
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("{} absent: built-in defaults", path.display()));
            let secure = c.path.is_none() || crate::config::check_root_owned(path).is_ok();
            add(
                "config",
                true,
                format!(
                    "{from}; uids {}..{} ({} slots); cgroup root {:?}; allowed group {:?}{}",
                    c.first_uid,
                    c.first_uid + c.slots - 1,
                    c.slots,
                    c.cgroup_root,
                    c.allowed_group,
                    if secure { "" } else { "; not root-owned, or writable by others: only root may use it" }
                ),
            );
            // On v2, whether our subtree gets its controllers (and swap can be turned off)
            // where the config puts it.
            if let Some(crate::cgroup::Backend::V2 { mount }) = &backend {
                match crate::cgroup::v2::diagnose(mount, &c.cgroup_root) {
                    Ok(detail) => add("cgroup-root", true, detail),
                    Err(e) => add("cgroup-root", false, e.to_string()),
                }
            }
            // Rootless: where the run's cgroup would go, or why nowhere (read only). Not a
            // refusal of the host: best-effort policies run without one.
            if !privileged {
                let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                let uid = nix::unistd::getuid().as_raw();
                let h = Hierarchies::read(Path::new("/proc/self/mountinfo")).unwrap_or_default();
                let (found, detail) =
                    match crate::cgroup::delegation::find(&h, c.rootless_cgroup_root.as_deref(), &own, uid) {
                        Ok(d) => (
                            true,
                            format!(
                            "{} ({}) is delegated to you: each run's cgroup goes to its isolate-grade/slot-N, with \
                             memory, pids and CPU limits",
                            d.dir.display(),
                            d.source.as_str()
                        ),
                        ),
                        Err(e) => (false, format!("{e}; without it, {}", crate::host::ROOTLESS_LIMITS)),
                    };
                add("cgroup-delegation", true, detail);
                no_delegation = !found;
            }
            // Root may run with it; sudo and setuid callers would be refused.
            insecure_config = !secure;
            // The slot uids must belong to nobody: a real account with one of them could
            // signal or ptrace a sandbox, or read what it writes.
            let taken: Vec<u32> = (c.first_uid..c.first_uid + c.slots)
                .filter(|&u| matches!(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u)), Ok(Some(_))))
                .collect();
            add(
                "slot-uids",
                taken.is_empty(),
                if taken.is_empty() {
                    format!("uids {}..{} have no account", c.first_uid, c.first_uid + c.slots - 1)
                } else {
                    format!("uids {taken:?} belong to accounts; choose another first_uid")
                },
            );
            for n in ["default", "strict"] {
                match crate::policy::Policy::builtin(n) {
                    Ok(p) => add("policy", c.check_limits(&p.limits).is_ok(), format!("{n}: {}", p.description)),
                    Err(e) => add("policy", false, e.to_string()),
                }
            }
        }
        Err(e) => add("config", false, e.to_string()),
    }

    for i in items.iter_mut() {
        match i.name {
            "config" => i.warn = insecure_config,
            "cgroup-delegation" => i.warn = no_delegation,
            _ => {}
        }
    }
    if let Some(python) = &args.python {
        // Asked, and the kernel started, as the caller: the way install and the batch do it.
        match caller.become_caller() {
            Ok(()) => {
                if caller.via == crate::identity::Via::Sudo {
                    crate::grade::set_home(caller.uid);
                }
                items.extend(check_python(python, &args.policy, config_path, caller.via == crate::identity::Via::Sudo))
            }
            Err(e) => items.push(Item { name: "python", ok: false, warn: false, detail: e.to_string() }),
        }
    }
    let ok = items.iter().all(|i| i.ok);
    match format {
        Format::Json => println!("{}", serde_json::json!({ "ok": ok, "items": items })),
        Format::Text => {
            for i in &items {
                let mark = match (i.ok, i.warn) {
                    (false, _) => "FAIL",
                    (true, true) => "warn",
                    (true, false) => "ok",
                };
                println!("{mark:<4} {:<15} {}", i.name, i.detail);
            }
            println!("{}", if ok { "the sandbox can run on this host" } else { "the sandbox cannot run on this host" });
        }
    }
    if ok {
        CheckExit::Ready
    } else {
        CheckExit::NotReady
    }
}

/// Can `python` run a kernel in the sandbox? What is bound for its `python3` kernel (the one
/// its Jupyter would start), then a real kernel through a twin made as install makes it.
fn check_python(python: &Path, policy: &str, config: Option<&Path>, sudo: bool) -> Vec<Item> {
    let item = |name, ok, detail| Item { name, ok, warn: false, detail };
    let made = crate::kernelspec::Launcher::new(sudo, config)
        .and_then(|l| crate::kernelspec::Maker::new(Some(python), policy, config, None, l.kernel(Some(policy))));
    let twin = made.and_then(|maker| {
        let specs = maker.specs()?;
        let spec = maker.find(&specs, "python3").expect("python3 is always found");
        let twin = maker.twin(&spec, "isolate-grade-check")?;
        Ok((maker, twin))
    });
    let (maker, twin) = match twin {
        Ok(x) => x,
        Err(e) => return vec![item("python", false, e.to_string())],
    };
    let rt = &twin.runtime;
    let list = |v: &[std::path::PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let mut detail = format!(
        "{} (Python {}): binds {}",
        rt.executable.display(),
        maker.client.version,
        if rt.binds.is_empty() { "none beyond the policy's".into() } else { list(&rt.binds) }
    );
    if !rt.links.is_empty() {
        detail += &format!("; symlinks {}", list(&rt.links));
    }
    for (k, v) in &rt.env {
        detail += &format!("; {k}={v}");
    }
    for n in &rt.notes {
        detail += &format!("; {n}");
    }
    let mut items = vec![item("python", true, detail)];
    let kernel = || -> Result<String, String> {
        let dir = tempfile::Builder::new().prefix("isolate-grade-check.").tempdir().map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        crate::kernelspec::install_twins(
            std::slice::from_ref(&twin),
            &dir.path().join("kernels"),
            Some(dir.path()),
            &maker.client.executable,
            &[],
        )
        .map_err(|e| e.to_string())?;
        Ok(format!(
            "a kernel started in the sandbox (policy {policy}), answered kernel_info and imported ipykernel in {:.1}s",
            started.elapsed().as_secs_f64()
        ))
    };
    match kernel() {
        Ok(d) => items.push(item("kernel", true, d)),
        Err(e) => items.push(item("kernel", false, e)),
    }
    items
}
