"""A throwaway Slurm cluster on this machine, for the tests: real daemons from Debian
(scripts/slurm.sh), started as root in a temp dir and removed afterwards.

    with SlurmCluster() as cluster:
        cluster.slurm("sbatch", "--wrap", "hostname")

What it starts:
- its own munged, with its own key, socket, pid file and log in the temp dir (a system
  munged, if any, is never used or touched);
- a bridge `sg<id>` with 10.231.N.1/24 (N free on this machine), and slurmctld in its own UTS
  namespace (hostname `ctl-<id>`) reached at that address;
- compute nodes `node1`, `node2`: each a slurmd in its own network namespace (`sg<id>-<node>`,
  its address 10.231.N.11, .12, ... on a veth pair to the bridge) and its own UTS namespace
  (hostname = node name). A node is a separate host for Slurm and the network; every process
  sees the host's filesystem, which is the cluster's shared filesystem. From a node, this
  machine is `ctl_addr` (10.231.N.1), never 127.0.0.1 (the node's own loopback): a service
  the jobs need (a database) listens there or on a unix socket in the shared filesystem.

The daemons are root's children and know nothing of cgroups (proctrack/linuxproc,
task/none). Everything the cluster creates is recorded, before it is created, in a state
file under STATE_DIR with the owner's PID; a later SlurmCluster (or `cleanup_leftovers()`)
removes what a SIGKILLed run left behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

# where each cluster's state file lives while it exists (tmpfs: a reboot clears it, and the
# namespaces and bridges with it)
STATE_DIR = Path("/run/isolate-grade-slurm-test")
# every bridge, veth and network namespace the harness makes starts with this
PREFIX = "sg"
SUBNET = "10.231"
DAEMONS = ("slurmctld", "slurmd", "munged")


def missing() -> Optional[str]:
    """None if Slurm and munge are installed, else what is missing."""
    absent = [c for c in (*DAEMONS, "sbatch", "ip", "unshare", "nsenter") if shutil.which(c) is None]
    return f"{', '.join(absent)} missing (run: bash scripts/slurm.sh)" if absent else None


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if
    it is gone or a zombie: with the PID it names one process, never a later one given the
    same PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def netns_pids(netns: str) -> List[int]:
    """Every process whose network namespace is `netns` (`ip netns pids`)."""
    r = run("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in r.stdout.split()]


def host_pids(netns: str) -> List[int]:
    """Every process of the host whose network namespace is `netns`, and their descendants
    (a job step that made a namespace of its own, as a sandbox does, is still the node's)."""
    pids = netns_pids(netns)
    return pids + descendants(pids)


def descendants(pids: Sequence[int]) -> List[int]:
    """Every living descendant of `pids` (slurmctld's slurmscriptd, a daemon's helpers)."""
    children: Dict[int, List[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(d.name))
    out: List[int] = []
    todo = list(pids)
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Proc:
    """A daemon the cluster started: PID and start time (to recognise it later)."""

    pid: int
    start: int

    def alive(self) -> bool:
        return start_time(self.pid) == self.start


@dataclass
class State:
    """What one cluster has made, written to STATE_DIR/<id>.json before each thing is made."""

    id: str
    owner: int
    owner_start: int
    tmp: str
    bridge: str
    netns: List[str] = field(default_factory=list)
    procs: Dict[str, Proc] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.id}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.rename(self.path)

    @classmethod
    def load(cls, path: Path) -> "State":
        d = json.loads(path.read_text())
        d["procs"] = {k: Proc(**v) for k, v in d["procs"].items()}
        return cls(**d)

    def owner_alive(self) -> bool:
        return start_time(self.owner) == self.owner_start

    def remove(self) -> None:
        """Kill what is left of this cluster and delete its namespaces, links and files."""
        for ns in self.netns:
            kill_pids(host_pids(ns))
        alive = [proc.pid for proc in self.procs.values() if proc.alive()]
        kill_pids(alive + descendants(alive))
        for ns in self.netns:
            # a process can still be dying; the namespace goes once it has
            for _ in range(50):
                if not netns_pids(ns):
                    break
                time.sleep(0.05)
            run("ip", "netns", "delete", ns, check=False)
        # the veths die with their namespace end; the bridge is ours to delete
        run("ip", "link", "delete", self.bridge, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.path.unlink(missing_ok=True)


def cleanup_leftovers() -> List[str]:
    """Remove every cluster whose owner is dead (a SIGKILLed test run): its daemons, job
    steps, network namespaces, bridge and temp dir. Returns the ids removed."""
    removed: List[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            state = State.load(path)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if not state.owner_alive():
            state.remove()
            removed.append(state.id)
    return removed


def lock_setup() -> int:
    """An exclusive lock over choosing a subnet, released by closing the fd."""
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def free_subnet() -> int:
    """N for 10.231.N.0/24, starting from this PID, that no address on this machine uses (a
    live cluster's bridge has its .1; the caller holds lock_setup())."""
    used = set(int(m) for m in re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", run("ip", "-4", "-o", "addr").stdout))
    start = os.getpid() % 254
    for i in range(254):
        n = (start + i) % 254 + 1
        if n not in used:
            return n
    raise RuntimeError(f"no free {SUBNET}.N.0/24")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """A controller and `nodes` compute nodes (see the module's docstring). `start()` (or
    `with`) brings it up and waits until every node is idle; `stop()` removes it."""

    def __init__(self, nodes: Sequence[str] = ("node1", "node2"), cpus: Optional[int] = None) -> None:
        self.nodes: List[str] = list(nodes)
        self.cpus = cpus or os.cpu_count() or 1
        self.id = secrets.token_hex(3)
        self.name = PREFIX + self.id
        self.ctl_host = f"ctl-{self.id}"
        self.subnet = 0
        self.port = 0
        self.tmp = Path()
        self.state: Optional[State] = None
        self._popen: Dict[str, subprocess.Popen] = {}

    # --- where things are -------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.tmp / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.tmp / "munge" / "munge.sock"

    @property
    def ctl_addr(self) -> str:
        return f"{SUBNET}.{self.subnet}.1"

    def addr(self, node: str) -> str:
        return f"{SUBNET}.{self.subnet}.{11 + self.nodes.index(node)}"

    def netns(self, node: str) -> str:
        return f"{self.name}-{node}"

    def node_dir(self, node: str) -> Path:
        return self.tmp / "nodes" / node

    def log(self, name: str) -> str:
        """A daemon's log: "slurmctld", "munged" or a node's name (its slurmd)."""
        path = {"slurmctld": self.tmp / "ctld" / "slurmctld.log",
                "munged": self.tmp / "munge" / "munged.log"}.get(name) or self.node_dir(name) / "slurmd.log"
        try:
            return path.read_text(errors="replace")
        except OSError as e:
            return f"(no log {path}: {e})"

    @property
    def env(self) -> Dict[str, str]:
        """The environment for Slurm's clients (sbatch, squeue, ...) against this cluster."""
        e = dict(os.environ)
        for k in [k for k in e if k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SALLOC_", "SRUN_"))]:
            del e[k]
        e["SLURM_CONF"] = str(self.conf)
        return e

    def slurm(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client (sbatch, squeue, sinfo, scontrol, scancel) against this cluster."""
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    # --- life -------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        lock = lock_setup()
        try:
            cleanup_leftovers()
            self.tmp = Path(tempfile.mkdtemp(prefix=f"slurm-{self.id}-"))
            # munged wants every directory up to its socket searchable by all
            self.tmp.chmod(0o755)
            # recorded before anything is made, so that a SIGKILL at any point leaves nothing
            # that a later run can't find
            self.state = State(self.id, os.getpid(), start_time(os.getpid()) or 0, str(self.tmp), self.name,
                               [self.netns(n) for n in self.nodes])
            self.state.save()
            self.subnet = free_subnet()
            self.port = free_port()
            self._network()
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(lock)
        try:
            self._write_conf()
            self._start_munged()
            self._start_slurmctld()
            for node in self.nodes:
                self._start_slurmd(node)
            for node in self.nodes:
                self.wait_state(node, "idle", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.state is None:
            return
        self.state.remove()
        for p in self._popen.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        self._popen.clear()
        self.state = None

    # --- set-up -----------------------------------------------------------------------
    def _network(self) -> None:
        br = self.name
        run("ip", "link", "add", br, "type", "bridge")
        run("ip", "addr", "add", f"{self.ctl_addr}/24", "dev", br)
        run("ip", "link", "set", br, "up")
        for i, node in enumerate(self.nodes):
            ns, host_end = self.netns(node), f"{br}n{i + 1}"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "link", "set", host_end, "master", br, "up")
            run("ip", "-n", ns, "addr", "add", f"{self.addr(node)}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")

    def _write_conf(self) -> None:
        t = self.tmp
        for d in ("munge", "ctld/state", *(f"nodes/{n}/spool" for n in self.nodes), "jobs"):
            (t / d).mkdir(parents=True, exist_ok=True)
        (t / "plugstack.conf").write_text("")
        nodes = "\n".join(f"NodeName={n} NodeAddr={self.addr(n)} NodeHostname={n} CPUs={self.cpus} State=UNKNOWN"
                          for n in self.nodes)
        self.conf.write_text(f"""\
# a throwaway cluster of tests/e2e/slurm_cluster.py
ClusterName={self.name}
SlurmctldHost={self.ctl_host}({self.ctl_addr})
SlurmctldPort={self.port}
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={t}/ctld/state
SlurmctldLogFile={t}/ctld/slurmctld.log
SlurmctldPidFile={t}/ctld/slurmctld.pid
SlurmdSpoolDir={t}/nodes/%n/spool
SlurmdLogFile={t}/nodes/%n/slurmd.log
SlurmdPidFile={t}/nodes/%n/slurmd.pid
PlugStackConfig={t}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
SwitchType=switch/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# a node that answers again is back in service; one that stops answering is DOWN in ~12 s
# (pings every SlurmdTimeout/3 s, each failing after MessageTimeout: the node's address
# still refuses connections, which Slurm retries until then)
ReturnToService=2
SlurmdTimeout=5
MessageTimeout=3
InactiveLimit=0
KillWait=2
MinJobAge=600
SlurmctldDebug=info
SlurmdDebug=info
{nodes}
PartitionName=main Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: Sequence[str], log: Path) -> None:
        """Start a daemon in the foreground, its output in `log`, and record it."""
        assert self.state is not None
        with open(log, "ab") as out:
            p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=self.env, start_new_session=True)
        self._popen[name] = p
        self.state.procs[name] = Proc(p.pid, start_time(p.pid) or 0)
        self.state.save()

    def _wait_for(self, what: str, ready: Callable[[], bool], name: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            p = self._popen[name]
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} before {what}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} after {timeout:.0f}s:\n{self.log(name)[-3000:]}")
            time.sleep(0.02)

    def _start_munged(self) -> None:
        m = self.tmp / "munge"
        key = m / "munge.key"
        key.write_bytes(secrets.token_bytes(128))
        key.chmod(0o600)
        self._spawn("munged", ["munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed",
                               f"--log-file={m}/munged.log"], m / "munged.log")
        self._wait_for("its socket", self.munge_socket.exists, "munged")

    def _start_slurmctld(self) -> None:
        # its own UTS namespace: slurmctld runs only where the hostname is SlurmctldHost's
        self._spawn("slurmctld", ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec slurmctld -D -f "$1"',
                                  self.ctl_host, str(self.conf)], self.tmp / "ctld" / "stdout.log")

        def answers() -> bool:
            return self.slurm("scontrol", "ping", check=False, timeout=10).returncode == 0
        self._wait_for("an answer to scontrol ping", answers, "slurmctld")

    def _start_slurmd(self, node: str) -> None:
        # its own network namespace and UTS namespace (hostname = node name). nsenter, not `ip
        # netns exec`, which would mount a /sys of its own: the node's job steps see the
        # host's /sys (and /sys/fs/cgroup) as a real compute node's do
        self._spawn(node, ["nsenter", f"--net=/run/netns/{self.netns(node)}", "unshare", "--uts", "sh", "-c",
                           'hostname "$0" && exec slurmd -D -N "$0" -f "$1"', node, str(self.conf)],
                    self.node_dir(node) / "stdout.log")

    # --- what the tests do ------------------------------------------------------------
    def netns_pids(self, node: str) -> List[int]:
        """The processes in `node`'s network namespace: its slurmd, slurmstepds and job steps."""
        return netns_pids(self.netns(node))

    def node_pids(self, node: str) -> List[int]:
        """netns_pids and their descendants (job steps in namespaces of their own)."""
        return host_pids(self.netns(node))

    def kill_node(self, node: str) -> None:
        """The node dies: SIGKILL its slurmd and every job step on it (every process in its
        network namespace and their descendants), as when a machine loses power."""
        for _ in range(20):
            pids = self.node_pids(node)
            if not pids:
                break
            kill_pids(pids)
            time.sleep(0.05)
        p = self._popen.get(node)
        if p is not None:
            p.wait(timeout=10)
        assert not self.node_pids(node), f"{node} still has processes: {self.node_pids(node)}"

    def restart_node(self, node: str) -> None:
        """Start the node's slurmd again (after kill_node); its state is not waited for."""
        p = self._popen.get(node)
        assert p is None or p.poll() is not None, f"{node}'s slurmd is still running"
        self._start_slurmd(node)

    def node_states(self) -> Dict[str, str]:
        """{node: state} as sinfo has it, lower case with its flags (e.g. "idle", "down*")."""
        out = self.slurm("sinfo", "-h", "-N", "-o", "%N %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_state(self, node: str, state: str, timeout: float = 20) -> float:
        """Wait until `node`'s state is `state` (sinfo's, without its flags ~ # ! % $ @ ^ -)
        and, unless `state` is "down", the node answers (no `*`); returns the seconds it took."""
        t0 = time.monotonic()
        seen = ""
        while time.monotonic() - t0 < timeout:
            seen = self.node_states().get(node, "")
            if self.state_is(seen, state):
                return time.monotonic() - t0
            time.sleep(0.1)
        raise TimeoutError(f"{node} is {seen!r}, not {state!r}, after {timeout:.0f}s\n"
                           f"slurmctld:\n{self.log('slurmctld')[-3000:]}\n{node}:\n{self.log(node)[-3000:]}")

    @staticmethod
    def state_is(seen: str, state: str) -> bool:
        """Whether sinfo's `seen` ("idle", "down*", "mixed~", ...) is `state`, answering
        (no `*`) unless `state` is "down"."""
        return seen.rstrip("*~#!%$@^-") == state and ("*" not in seen or state == "down")

    def job(self, job_id: str) -> Dict[str, str]:
        """`scontrol show job` as {key: value} (of the first record, for an array job's task
        use "ID_TASK")."""
        out = self.slurm("scontrol", "-o", "show", "job", job_id).stdout
        first = out.splitlines()[0]
        return dict(kv.split("=", 1) for kv in first.split() if "=" in kv)
