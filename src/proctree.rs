//! CPU time of a sandbox without a cgroup (rootless with best-effort limits): the sum over
//! every live process of its PID namespace, found from its init down the host's
//! `/proc/PID/task/TID/children`, of its own CPU time and its reaped children's.
//!
//! Why the sum is the total: in a PID namespace every orphan is reparented to the namespace's
//! init, so the tree from the init holds every live process; and a process that ended was
//! reaped by its parent (its time, and its own reaped children's, then in the parent's
//! `cutime`/`cstime`) or is a zombie still listed with its own time. A process that ends
//! between two reads is missed by that one reading only (the next sees it in its parent's
//! count): the sum can lag, never run ahead, so no sandbox is killed early. A child is counted
//! only if its `ppid` is the parent it was listed under: a pid reused by another process of
//! the host in between is not.

use std::path::Path;
use std::time::Duration;

/// Processes walked at most per reading (a fork bomb's tree is held by `RLIMIT_NPROC`, well
/// below this): the supervisor's loop must stay short.
const MAX_PROCESSES: usize = 4096;

/// The CPU time of `init`'s tree, read from the procfs at `proc` (the host's `/proc`).
pub fn cpu_time(proc: &Path, init: i32) -> std::io::Result<Duration> {
    let ticks = clock_ticks();
    let mut total: u64 = 0;
    let mut stack = vec![(init, None::<i32>)];
    let mut seen = 0;
    while let Some((pid, parent)) = stack.pop() {
        seen += 1;
        if seen > MAX_PROCESSES {
            break;
        }
        let stat = match std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) {
            Ok(s) => s,
            // the init itself must be there; any other process may just have ended
            Err(e) if parent.is_none() => return Err(e),
            Err(_) => continue,
        };
        let Some(s) = parse_stat(&stat) else { continue };
        if parent.is_some_and(|p| p != s.ppid) {
            continue;
        }
        total = total.saturating_add(s.ticks);
        for child in children(proc, pid) {
            stack.push((child, Some(pid)));
        }
    }
    Ok(Duration::from_nanos(total.saturating_mul(1_000_000_000 / ticks)))
}

/// Children of every thread of `pid` (a child belongs to the thread that forked it).
fn children(proc: &Path, pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(proc.join(pid.to_string()).join("task")) else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// What one `/proc/PID/stat` line says that we use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    ppid: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    ticks: u64,
}

/// The fields after the command name, which is in parentheses and may itself hold spaces and
/// parentheses (the program chooses it): everything up to the last `)` is skipped.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17
    let ppid = f.get(1)?.parse().ok()?;
    let mut ticks: u64 = 0;
    for field in f.get(11..15)? {
        ticks = ticks.saturating_add(field.parse::<i64>().ok()?.max(0) as u64);
    }
    Some(Stat { ppid, ticks })
}

fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "4242 (a) b (c)) R 17 4242 4242 0 -1 4194304 100 0 0 0 250 50 7 3 20 0 1 0 99 0 0";
        assert_eq!(parse_stat(line), Some(Stat { ppid: 17, ticks: 250 + 50 + 7 + 3 }));
        assert_eq!(parse_stat("1 (x) S"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    /// A fake procfs: pid -> (ppid, ticks, children).
    fn fake(dir: &Path, procs: &[(i32, i32, u64, &[i32])]) {
        for &(pid, ppid, ticks, kids) in procs {
            let task = dir.join(pid.to_string()).join("task").join(pid.to_string());
            std::fs::create_dir_all(&task).unwrap();
            let stat = format!("{pid} (sh) S {ppid} 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 5 0 0");
            std::fs::write(dir.join(pid.to_string()).join("stat"), stat).unwrap();
            let list: Vec<String> = kids.iter().map(|k| k.to_string()).collect();
            std::fs::write(task.join("children"), list.join(" ")).unwrap();
        }
    }

    #[test]
    fn the_tree_from_the_init_is_summed_and_a_reused_pid_is_not() {
        let dir = tempfile::tempdir().unwrap();
        // 10 (init) -> 11 -> 12, 13; 14 is listed under 10 but its ppid is another process's
        fake(
            dir.path(),
            &[
                (10, 1, 5, &[11, 14]),
                (11, 10, 100, &[12, 13]),
                (12, 11, 30, &[]),
                (13, 11, 0, &[]),
                (14, 999, 7000, &[]),
            ],
        );
        let per_tick = Duration::from_secs(1) / clock_ticks() as u32;
        assert_eq!(cpu_time(dir.path(), 10).unwrap(), per_tick * 135);
        // a child listed but gone since: the rest still counts
        std::fs::remove_dir_all(dir.path().join("12")).unwrap();
        assert_eq!(cpu_time(dir.path(), 10).unwrap(), per_tick * 105);
        // the init gone: an error, not a zero
        assert!(cpu_time(dir.path(), 77).is_err());
    }
}
