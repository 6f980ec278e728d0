//! cgroup v2 on the real mount. The CI host is hybrid: its cgroup2 mount has no controllers,
//! so a sandbox can't be limited there (the unit tests check that the v2 backend refuses).
//! What can be checked for real is the mechanism the v2 backend relies on: a child created
//! with `clone3(CLONE_INTO_CGROUP)` is born inside the cgroup, nothing writes `cgroup.procs`.

mod common;

use isolate_grade::cgroup::Hierarchies;
use isolate_grade::sys::raw::{clone3, exit_now, Cloned};
use std::os::fd::AsRawFd;
use std::path::Path;

#[test]
fn clone_into_cgroup_on_the_real_v2_mount() {
    if !common::require_root() {
        return;
    }
    let h = Hierarchies::read(Path::new("/proc/self/mountinfo")).unwrap();
    let Some(mount) = h.v2 else {
        eprintln!("no cgroup2 mount on this host");
        return;
    };
    let name = format!("isolate-grade-test-{}", std::process::id());
    let dir = mount.join(&name);
    std::fs::create_dir(&dir).unwrap();
    let fd = std::fs::File::open(&dir).unwrap();
    let expected = format!("0::/{name}\n");
    match clone3(0, Some(fd.as_raw_fd())).expect("clone3 CLONE_INTO_CGROUP") {
        Cloned::Child => {
            // Only raw reads and _exit here: the test harness has other threads.
            let mut buf = [0u8; 4096];
            // SAFETY: a constant NUL-terminated path; buf is valid for its length.
            let n = unsafe {
                let f = libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY);
                let n = libc::read(f, buf.as_mut_ptr().cast(), buf.len());
                libc::close(f);
                n
            };
            let text = &buf[..n.max(0) as usize];
            let born_inside = text.windows(expected.len()).any(|w| w == expected.as_bytes());
            exit_now(if born_inside { 0 } else { 1 });
        }
        Cloned::Parent { pid, pidfd: _pidfd } => {
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
            std::fs::remove_dir(&dir).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0),
                "child not born in {}",
                dir.display()
            );
        }
    }
    assert!(!dir.exists());
}
