#!/usr/bin/env bash
# Install everything a one-node localhost Slurm cluster needs (Debian 12 / bookworm, run as root).
# Idempotent: a fast no-op when every package is already installed.
set -euo pipefail

PKGS=(
  slurm-wlm slurmctld slurmd slurm-client slurm-wlm-basic-plugins  # Slurm 22.05 daemons + clients + plugins (mpi_pmix*.so lives in basic-plugins)
  slurmdbd slurm-wlm-mysql-plugin                                  # accounting daemon (sacct)
  munge libmunge2                                                  # authentication
  mariadb-server mariadb-client                                    # storage for slurmdbd
  libpmix2 libpmix-dev                                             # mpi_pmix_v4.so dlopen()s /usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so (shipped by libpmix-dev)
  openmpi-bin libopenmpi-dev                                       # Open MPI (built with PMIx) + headers for building mpi4py
  python3-venv python3-dev gcc                                     # scratch venvs / building mpi4py from source
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install.sh: all packages present"
  exit 0
fi

echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another apt-get may hold the dpkg lock (concurrent sessions / CI steps): wait for it instead of failing.
apt_opts=(-o DPkg::Lock::Timeout=900 -y --no-install-recommends)
if ! apt-get install "${apt_opts[@]}" "${missing[@]}"; then
  # Package lists may be missing/stale on a fresh machine.
  apt-get -o DPkg::Lock::Timeout=900 update
  apt-get install "${apt_opts[@]}" "${missing[@]}"
fi
echo "install.sh: done"
