//! Rootless mode (issue #17), from outside: what `isolate-grade check` says about the mode and
//! about user namespaces for an unprivileged caller, in the places instructors' servers run:
//! a plain host, a host or container whose `user.max_user_namespaces` is 0, a container-like
//! `/proc` (read-only `/proc/sys`, as Docker leaves it), and a process under a seccomp filter
//! that refuses user namespaces (isolate-grade's own sandbox, which kills the process that
//! tries). Each environment is made by the test; the unprivileged caller is `nobody` with no
//! capabilities (`setpriv`).

mod common;
use common::{bin, require_root};
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
    assert!(!ok, "the rootless sandbox is not built yet, so check must not call it ready: {mode}");
    assert!(items["user-namespaces"].0, "{items:?}");
    assert!(items["userns-procfs"].1.contains("can be mounted"), "{items:?}");
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
