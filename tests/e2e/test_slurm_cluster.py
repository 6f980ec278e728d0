"""The Slurm test harness (tests/e2e/slurm_cluster.py) against real daemons: jobs run on both
nodes, each a host of its own on a shared filesystem; a node that dies is DOWN within
seconds, its requeueable job goes back to the queue and its other job fails; a node started
again returns to service; and what a SIGKILLed run left behind is removed by the next."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

from slurm_cluster import STATE_DIR, SlurmCluster, State, cleanup_leftovers, lock_setup

HERE = Path(__file__).resolve().parent


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 20) -> float:
    """Poll `ready` until it holds; the seconds it took."""
    t0 = time.monotonic()
    while not ready():
        assert time.monotonic() - t0 < timeout, f"no {what} after {timeout:.0f}s"
        time.sleep(0.1)
    return time.monotonic() - t0


def sbatch(cluster: SlurmCluster, *args: str) -> str:
    return cluster.slurm("sbatch", "--parsable", *args).stdout.strip().split(";")[0]


def cmdlines(pids: List[int]) -> List[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            pass
    return out


def test_array_tasks_run_on_both_nodes_each_its_own_host(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    out = c.tmp / "jobs" / f"array-{secrets.token_hex(4)}"
    out.mkdir()
    # written here, read by every task on its node: the filesystem is shared both ways
    token = secrets.token_hex(8)
    (out / "token").write_text(token)
    # --cpus-per-task: a task takes a whole node (2 CPUs), so two run at once, one on each
    job = sbatch(c, "--array=0-3", f"--cpus-per-task={c.cpus}", "-o", f"{out}/%a.out", "--wrap",
                 f'echo "$(hostname) $SLURMD_NODENAME $(cat {out}/token) $SLURM_ARRAY_TASK_ID"; '
                 "ip -4 -o addr show eth0 | awk '{print $4}'; sleep 1")
    wait_for(f"end of job array {job}", lambda: not c.slurm("squeue", "-h", "-j", job).stdout.strip(), 30)
    seen: Dict[int, str] = {}
    for task in range(4):
        first, address = (out / f"{task}.out").read_text().split("\n")[:2]
        hostname, nodename, got_token, task_id = first.split()
        assert (nodename, got_token, task_id) == (hostname, token, str(task)), first
        # its own hostname and its own address, on the bridge's subnet
        assert address == f"{c.addr(hostname)}/24", (hostname, address)
        seen[task] = hostname
        assert c.job(f"{job}_{task}")["JobState"] == "COMPLETED"
    assert set(seen.values()) == {"node1", "node2"}, seen


def test_killed_node_is_down_its_jobs_requeued_or_failed_then_back(slurm_cluster: SlurmCluster) -> None:
    c = slurm_cluster
    out = c.tmp / "jobs" / f"kill-{secrets.token_hex(4)}"
    out.mkdir()
    # one step leaves the node's network namespace, as a sandboxed kernel does: still the node's
    mark = f"sleep 7{secrets.randbelow(10**6):06d}"
    requeue = sbatch(c, "--requeue", "-w", "node1", "-o", f"{out}/requeue-%j.out", "--wrap",
                     f"hostname; unshare --net {mark} & sleep 300")
    no_requeue = sbatch(c, "--no-requeue", "-w", "node1", "-o", f"{out}/no-requeue-%j.out", "--wrap",
                        "hostname; sleep 300")
    try:
        wait_for("both jobs running", lambda: all(
            c.job(j)["JobState"] == "RUNNING" and (out / f"{n}-{j}.out").exists()
            for n, j in (("requeue", requeue), ("no-requeue", no_requeue))))
        # the job steps are node1's processes, in its network namespace or below it
        wait_for("the step in a namespace of its own",
                 lambda: any(mark in cmd for cmd in cmdlines(c.node_pids("node1"))))
        assert sum("sleep 300" in cmd for cmd in cmdlines(c.netns_pids("node1"))) == 2
        assert not any(mark in cmd for cmd in cmdlines(c.netns_pids("node1")))
        c.kill_node("node1")
        everyone = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]
        assert not any(mark in cmd for cmd in cmdlines(everyone)), f"{mark} outlived node1"
        took = c.wait_state("node1", "down", timeout=20)
        print(f"node1 DOWN {took:.1f}s after its slurmd and job steps were killed")
        r = c.job(requeue)
        assert (r["JobState"], r["Restarts"]) == ("PENDING", "1"), r
        n = c.job(no_requeue)
        assert (n["JobState"], n["Restarts"]) == ("NODE_FAIL", "0"), n
        assert c.node_states()["node2"] == "idle"
        c.restart_node("node1")
        c.wait_state("node1", "idle", timeout=20)
    finally:
        # node1 as the module's other tests expect it: its slurmd running, idle
        c.slurm("scancel", requeue, no_requeue, check=False)
        if not c.netns_pids("node1"):
            c.restart_node("node1")
        c.wait_state("node1", "idle", timeout=30)


def test_what_a_killed_run_left_is_removed(slurm_cluster: SlurmCluster) -> None:
    """A run SIGKILLed with its cluster up leaves daemons, namespaces, a bridge and a temp dir;
    the next cleanup finds them by their state file (owner dead) and removes them, and leaves
    a live run's cluster alone."""
    starter = ("import sys, time\nfrom slurm_cluster import SlurmCluster\n"
               "c = SlurmCluster(nodes=('node1',))\nc.start()\nprint(c.id, flush=True)\ntime.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", starter], cwd=HERE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(HERE)})
    lock = -1
    try:
        crashed_id = p.stdout.readline().strip() if p.stdout else ""
        assert crashed_id, f"the crashing run's cluster did not start (exit {p.poll()})"
        # no other cluster's start (another pytest worker) cleans up from here on: this test's
        # cleanup must be the one that finds the leftovers
        lock = lock_setup()
        state = State.load(STATE_DIR / f"{crashed_id}.json")
        p.send_signal(signal.SIGKILL)
        p.wait()
        daemons = state.procs
        assert set(daemons) == {"munged", "slurmctld", "node1"}
        assert all(proc.alive() for proc in daemons.values()), "the daemons should outlive their owner"
        netns = state.netns[0]
        assert netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert subprocess.run(["ip", "link", "show", state.bridge], capture_output=True).returncode == 0
        assert Path(state.tmp).is_dir()
        removed = cleanup_leftovers()
    finally:
        if lock >= 0:
            os.close(lock)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert crashed_id in removed
    assert slurm_cluster.id not in removed
    assert not [name for name, proc in daemons.items() if proc.alive()]
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", state.bridge], capture_output=True).returncode != 0
    assert not Path(state.tmp).exists()
    assert not state.path.exists()
    # the live cluster is untouched
    assert json.loads((STATE_DIR / f"{slurm_cluster.id}.json").read_text())["owner"] == os.getpid()
    assert slurm_cluster.node_states() == {"node1": "idle", "node2": "idle"}
