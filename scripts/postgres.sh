#!/usr/bin/env bash
# PostgreSQL for tests/e2e/test_postgres.py: Debian's `postgresql` (15), its server binaries
# only. The tests start throwaway clusters of their own (initdb in a temp dir, a unix socket
# there); no system service is started or enabled: apt-get runs with a policy-rc.d that
# refuses every start (exit 101), and the machine's own policy-rc.d, if any, is put back after.
# The driver nbgrader's SQLAlchemy uses for postgresql+psycopg:// URLs (psycopg 3) is pinned in
# scripts/requirements.txt (scripts/venv.sh installs it).
# Idempotent; needs root for apt-get when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bin=/usr/lib/postgresql/15/bin
if [[ ! -x $bin/initdb || ! -x $bin/pg_ctl ]]; then
  [[ $(id -u) -eq 0 ]] || { echo "postgres.sh: PostgreSQL 15 is missing; run as root to install it" >&2; exit 1; }
  policy=/usr/sbin/policy-rc.d
  saved=
  if [[ -e $policy ]]; then
    saved=$(mktemp /tmp/policy-rc.d.XXXXXX)
    cp -p "$policy" "$saved"
  fi
  restore() {
    if [[ -n $saved ]]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
  }
  trap restore EXIT
  printf '#!/bin/sh\n# scripts/postgres.sh: no service starts while it installs PostgreSQL\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  need_file $bin/initdb postgresql
  restore
  trap - EXIT
fi
[[ -x $bin/initdb && -x $bin/pg_ctl ]] || { echo "postgres.sh: no $bin/initdb after installing postgresql" >&2; exit 1; }
echo "postgres.sh: $($bin/postgres --version)"
