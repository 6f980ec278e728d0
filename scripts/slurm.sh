#!/usr/bin/env bash
# Slurm for tests/e2e/test_slurm_cluster.py (tests/e2e/slurm_cluster.py starts a throwaway
# cluster from these binaries), installed the way a site would, from Debian (22.05 on Debian 12):
#   slurmctld, slurmd  the controller and the compute node daemon
#   slurm-client       sbatch, squeue, sinfo, scontrol, scancel
#   munge              the authentication daemon and its library
# No service is started by the install: a /usr/sbin/policy-rc.d answering 101 is in place
# while apt-get runs (removed afterwards if this script made it); on a machine run by systemd
# the units of the packages installed here are disabled too, so that none starts at boot.
# The tests start their own munged and Slurm daemons with their own keys, configuration and
# sockets.
# Idempotent; needs root for apt-get when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

missing=()
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
command -v munged >/dev/null 2>&1 || missing+=(munge)

if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null ||
    { echo "slurm.sh: missing ${missing[*]} (Debian packages); run as root to install them" >&2; exit 1; }
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# scripts/slurm.sh: no service starts while Slurm is installed\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  remove_policy() { [[ -n $made_policy ]] && rm -f "$policy"; return 0; }
  trap remove_policy EXIT
  echo "slurm.sh: installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  remove_policy
  trap - EXIT
  if [[ -d /run/systemd/system ]]; then
    for pkg in "${missing[@]}"; do
      case $pkg in slurmctld | slurmd | munge) systemctl disable -q "$pkg.service" 2>/dev/null || true ;; esac
    done
  fi
fi

need slurmctld slurmctld
need slurmd slurmd
need sbatch slurm-client
need munged munge
need ip iproute2
# (the clients read a configuration even for --version: slurmctld -V answers without one)
echo "slurm.sh: $(slurmctld -V), $(munged --version | awk '{print $1}')"
