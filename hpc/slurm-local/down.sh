#!/usr/bin/env bash
# Stop the one-node localhost Slurm cluster started by up.sh. Idempotent.
#   1. scancel every job and wait briefly for them to leave the node
#   2. stop slurmd, slurmctld, slurmdbd (SIGTERM, then SIGKILL after a grace period)
#   3. stop mariadbd and munged (skipped when SLURM_LOCAL_KEEP_BASE=1, used by up.sh on reconfig)
# Job/accounting state (/var/spool/slurmctld, MariaDB) is kept, so up.sh resumes job ids.
set -uo pipefail

RUNDIR=/run/slurm
GRACE=${SLURM_LOCAL_STOP_GRACE:-20}

log() { echo "down.sh: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "down.sh: must run as root" >&2
  exit 1
fi

# pids of a daemon: from its pid file (if the pid still runs that exe), else by exact exe name.
daemon_pids() {
  local pf=$1 name=$2 pid
  if [[ -f $pf ]]; then
    pid=$(cat "$pf" 2>/dev/null)
    if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
      echo "$pid"
      return
    fi
  fi
  pidof -- "$name" 2>/dev/null || true   # exact executable name match only
}

stop_daemon() {
  local pf=$1 name=$2 pids p deadline
  pids=$(daemon_pids "$pf" "$name")
  if [[ -z $pids ]]; then
    rm -f "$pf"
    return 0
  fi
  log "stopping $name ($pids)"
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  deadline=$(( $(date +%s) + GRACE ))
  for p in $pids; do
    while kill -0 "$p" 2>/dev/null; do
      if (( $(date +%s) >= deadline )); then
        log "$name ($p) did not stop after ${GRACE}s, sending SIGKILL"
        kill -KILL "$p" 2>/dev/null || true
        sleep 0.5
        break
      fi
      sleep 0.2
    done
  done
  rm -f "$pf"
}

# ---------------------------------------------------------------- cancel jobs
if command -v scontrol >/dev/null 2>&1 && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [[ -n ${jobs// /} ]]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 15 scancel $jobs 2>/dev/null || true
    deadline=$(( $(date +%s) + 15 ))
    while [[ -n $(timeout 5 squeue -h -o %A 2>/dev/null) ]] && (( $(date +%s) < deadline )); do
      sleep 0.5
    done
  fi
fi

# ---------------------------------------------------------------- slurm daemons
stop_daemon "$RUNDIR/slurmd.pid" slurmd
# Leftover step daemons of jobs that did not finish in time.
for p in $(pidof slurmstepd 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
stop_daemon "$RUNDIR/slurmctld.pid" slurmctld
stop_daemon "$RUNDIR/slurmdbd.pid" slurmdbd

if [[ ${SLURM_LOCAL_KEEP_BASE:-0} == 1 ]]; then
  exit 0
fi

# ---------------------------------------------------------------- mariadb + munge
if mysqladmin --protocol=socket -uroot ping >/dev/null 2>&1; then
  log "stopping mariadbd"
  timeout 60 mysqladmin --protocol=socket -uroot shutdown >/dev/null 2>&1 || true
fi
stop_daemon /run/mysqld/mysqld.pid mariadbd
stop_daemon /run/munge/munged.pid munged

log "cluster stopped"
exit 0
