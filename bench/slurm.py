#!/usr/bin/env python3
"""`isolate-grade ASSIGNMENT --slurm` against the local batch, on this machine, in one run.

A throwaway PostgreSQL cluster (tests/e2e/pg_cluster.py) holds the gradebooks, and a throwaway
Slurm cluster (tests/e2e/slurm_cluster.py: a controller and two nodes, each in its own network
namespace, sharing this machine's filesystem and its 2 cores) runs the tasks. The fixture
course's ps1 with COPIES copies of each of its 10 students is prepared afresh for each run and
graded, in alternating order, ROUNDS times each way:

  local: isolate-grade ps1 --jobs 2xJOBS                  (one process, 2xJOBS workers)
  slurm: isolate-grade ps1 --slurm --slurm-tasks 2 --jobs JOBS --slurm-arg=--exclusive
                                                          (a task on each node, JOBS workers each)

The same workers on the same 2 cores: no speed-up is possible here, so the difference is what
--slurm costs (the check worker, the preflight job, the job array's start, each task's own
checks, the polling). Gradebooks must be equal. Also measured: when the job array started and
the first result arrived (from the instructor's own lines), the most connections the
gradebook's database had during each run, and the advisory lock (every gradebook use of every
worker takes it) round trips per second with 1, 8 and 32 connections at once.

    sudo .venv/bin/python bench/slurm.py [--copies 2] [--rounds 2] [--jobs 4]

Needs root, `cargo build --release`, scripts/postgres.sh and scripts/slurm.sh.
"""
import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures" / "course"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import course_tools  # noqa: E402
import pg_cluster  # noqa: E402
import slurm_cluster  # noqa: E402


class PeakConnections(threading.Thread):
    """The most backends connected to DB, sampled every 0.2 s until stopped."""

    def __init__(self, pg: pg_cluster.PgCluster, db: str) -> None:
        super().__init__(daemon=True)
        self.pg, self.db, self.peak, self.done = pg, db, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            n = self.pg.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.db}'").strip()
            self.peak = max(self.peak, int(n or 0))


def graded(binary: Path, course: Path, args, env, pg, db):
    """Run one batch: (wall, seconds to the job array's line, seconds to the first result)."""
    peak = PeakConnections(pg, db)
    peak.start()
    t0 = time.monotonic()
    p = subprocess.Popen([str(binary), "ps1", "--course", str(course), *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    marks = {}
    for line in p.stderr:
        t = time.monotonic() - t0
        if "--slurm: job" in line and "tasks" in line:
            marks.setdefault("array", t)
        if line.startswith("[") and "/" in line.split("]")[0]:
            marks.setdefault("first", t)
    out = p.stdout.read()
    p.wait()
    wall = time.monotonic() - t0
    peak.done.set()
    peak.join()
    if p.returncode != 0:
        sys.exit(f"{args}: exit {p.returncode}\n{out}")
    return wall, marks.get("array"), marks.get("first"), peak.peak


def lock_rate(pg: pg_cluster.PgCluster, url_db: str, connections: int, seconds: float = 3.0) -> float:
    """pg_advisory_lock/unlock round trips per second on one key, CONNECTIONS at once."""
    import psycopg

    conninfo = f"host={pg.socket_dir} dbname={url_db} user={pg.user} password={pg.password}"
    counts = [0] * connections
    stop = threading.Event()

    def one(i: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as c:
            while not stop.is_set():
                c.execute("SELECT pg_advisory_lock(42)")
                c.execute("SELECT pg_advisory_unlock(42)")
                counts[i] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=2, help="copies of each of the 10 students (default 2: 20)")
    p.add_argument("--rounds", type=int, default=2, help="runs each way (default 2)")
    p.add_argument("--jobs", type=int, default=4, help="workers per Slurm task; the local batch has twice as many")
    p.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "isolate-grade")
    a = p.parse_args()
    for why in (pg_cluster.missing(), slurm_cluster.missing()):
        if why:
            sys.exit(why)
    runs = {"local": [], "slurm": []}
    with pg_cluster.pg_cluster() as pg, slurm_cluster.SlurmCluster() as cluster:
        env = {**course_tools.nbgrader_env(), "SLURM_CONF": cluster.env["SLURM_CONF"]}
        with_args = {"local": ["--jobs", str(2 * a.jobs)],
                     "slurm": ["--slurm", "--slurm-tasks", "2", "--jobs", str(a.jobs), "--slurm-arg=--exclusive"]}
        books = {}
        base = Path(f"/tmp/isolate-grade-bench-slurm-{time.time_ns()}")
        for r in range(a.rounds):
            for how in (("local", "slurm") if r % 2 == 0 else ("slurm", "local")):
                db = f"{how}{r}"
                url = pg.create_db(db)
                course = course_tools.prepare(base / db, copies=a.copies, db_url=url)
                wall, array, first, peak = graded(a.binary, course, with_args[how], env, pg, db)
                runs[how].append((wall, array, first, peak))
                books[db] = course_tools.gradebook(course, "ps1", db_url=url)
                print(f"{how:5} round {r}: {wall:6.1f} s  array at {array or 0:5.1f} s  first result at "
                      f"{first or 0:5.1f} s  peak connections {peak}", flush=True)
        first_book = next(iter(books.values()))
        assert all(b == first_book for b in books.values()), "the gradebooks differ"
        rates = {n: lock_rate(pg, "local0", n) for n in (1, 8, 32)}
        subprocess.run(["rm", "-rf", str(base)], check=False)
    students = 10 * a.copies
    med = {h: statistics.median(w for w, *_ in runs[h]) for h in runs}
    print(f"\n{students} students, {a.rounds} runs each way, gradebooks equal")
    print(f"local (--jobs {2 * a.jobs}):                      median {med['local']:.1f} s")
    print(f"--slurm (2 tasks x --jobs {a.jobs}, one per node):  median {med['slurm']:.1f} s "
          f"(+{med['slurm'] - med['local']:.1f} s, {med['slurm'] / med['local']:.2f}x)")
    print(f"  job array started at {statistics.median(x for _, x, _, _ in runs['slurm']):.1f} s "
          f"(the check worker and the preflight job before it); first result at "
          f"{statistics.median(x for _, _, x, _ in runs['slurm']):.1f} s (local: "
          f"{statistics.median(x for _, _, x, _ in runs['local']):.1f} s)")
    print(f"  peak database connections: local {max(c for *_, c in runs['local'])}, "
          f"--slurm {max(c for *_, c in runs['slurm'])}")
    print("advisory lock round trips/s: " + ", ".join(f"{n} at once {v:.0f}" for n, v in rates.items()))


if __name__ == "__main__":
    main()
