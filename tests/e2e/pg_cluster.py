"""A throwaway PostgreSQL cluster of Debian's server (scripts/postgres.sh installs it), for the
tests (conftest.py's pg_cluster) and the benchmarks (bench/slurm.py): its data and unix socket
in a temp dir under /tmp, run by the `postgres` OS user. Needs root."""

import os
import secrets
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def missing() -> Optional[str]:
    """Why a cluster can't be made here, if it can't."""
    absent = [p for p in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / p).exists()]
    if absent:
        return f"PostgreSQL 15 is not installed ({PG_BIN}: no {', '.join(absent)}; run scripts/postgres.sh)"
    return "needs root (starts the cluster as the postgres user)" if os.geteuid() != 0 else None


@dataclass
class PgCluster:
    """A throwaway PostgreSQL cluster: its data and unix socket in a temp dir under /tmp (no
    TCP), run by the `postgres` OS user; the role `grader` logs in with `password`
    (scram-sha-256), the superuser `postgres` only by peer auth."""

    base: Path
    password: str
    user: str = "grader"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess:
        r = subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv],
                           capture_output=True, text=True, timeout=120, cwd=self.base)
        assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
        return r

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "start", "-w", "-D", str(self.base / "data"),
                          "-l", str(self.base / "server.log"), "-o",
                          f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
                          # fsync off: only the server is ever killed, never the machine; synchronous_commit
                          # stays on, or a grade the batch saw committed could be lost in a crash
                          "-c max_connections=200 -c fsync=off -c full_page_writes=off")

    def stop(self) -> None:
        """At once, as a crash (-m immediate): every connection is cut."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.base / "data"))

    def sql(self, statement: str, db: str = "postgres") -> str:
        return self._as_postgres(str(PG_BIN / "psql"), "-h", str(self.socket_dir), "-U", "postgres",
                                 "-d", db, "-tAc", statement).stdout

    def create_db(self, name: str) -> str:
        """A new database owned by the grader role; its URL (nbgrader's db_url)."""
        self.sql(f'CREATE DATABASE "{name}" OWNER {self.user}')
        return self.url(name)

    def url(self, db: str, password: Optional[str] = None, scheme: str = "postgresql+psycopg",
            socket_dir: Optional[Path] = None) -> str:
        pw = self.password if password is None else password
        return f"{scheme}://{self.user}:{pw}@/{db}?host={socket_dir or self.socket_dir}"




@contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A new cluster, started, with the role `grader`; stopped at once and removed after."""
    base = Path(tempfile.mkdtemp(prefix="isolate-grade-pg-", dir="/tmp"))
    cluster = PgCluster(base, "pw-" + secrets.token_hex(12))
    (base / "sock").mkdir()
    shutil.chown(base, "postgres", "postgres")
    shutil.chown(base / "sock", "postgres", "postgres")
    started = False
    try:
        cluster._as_postgres(str(PG_BIN / "initdb"), "-D", str(base / "data"), "-U", "postgres",
                             "--auth-local=peer", "--auth-host=reject", "-E", "UTF8", "--no-sync")
        (base / "data" / "pg_hba.conf").write_text("local all postgres peer\nlocal all all scram-sha-256\n")
        cluster.start()
        started = True
        cluster.sql(f"CREATE ROLE {cluster.user} LOGIN PASSWORD '{cluster.password}'")
        yield cluster
    finally:
        if started:
            subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                            str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(base / "data")],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
