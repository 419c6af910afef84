#!/usr/bin/env bash
# Stop a localhost Slurm cluster started by up.sh. Idempotent.
#
#   down.sh            the one-node cluster and the shared base:
#     1. scancel every job and wait briefly for them to leave the node
#     2. stop slurmd, slurmctld, slurmdbd (SIGTERM, then SIGKILL after a grace period)
#     3. stop mariadbd and munged (skipped when SLURM_LOCAL_KEEP_BASE=1, used by up.sh on reconfig)
#   down.sh --nodes 2  only the two-node cluster: scancel its jobs, stop its slurmctld and two
#                      slurmd, kill what is left in its namespaces, delete the namespaces and bridge.
#                      munged, MariaDB and slurmdbd (shared with the one-node cluster) keep running.
# Job/accounting state (/var/spool/slurmctld*, MariaDB) is kept, so up.sh resumes job ids.
set -uo pipefail

usage() { echo "usage: down.sh [--nodes 1|2]" >&2; exit 2; }
NODES=1
case $# in
  0) ;;
  1) [[ $1 == --nodes=* ]] || usage; NODES=${1#--nodes=} ;;
  2) [[ $1 == --nodes ]] || usage; NODES=$2 ;;
  *) usage ;;
esac
[[ $NODES == 1 || $NODES == 2 ]] || usage

RUNDIR=/run/slurm
GRACE=${SLURM_LOCAL_STOP_GRACE:-20}

# Two-node cluster (keep in step with up.sh).
CONF2=/etc/slurm-2node/slurm.conf
RUNDIR2=/run/slurm-2node
BRIDGE=srbr0
NODE_NAMES=(srn1 srn2)

# Slurm clients here talk to the cluster being stopped, whatever the caller exported.
if (( NODES == 2 )); then export SLURM_CONF=$CONF2; else export SLURM_CONF=/etc/slurm/slurm.conf; fi

log() { echo "down.sh: $*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "down.sh: must run as root" >&2
  exit 1
fi

# True if pid exists and is not a zombie (reaping by PID 1 can lag in containers).
running() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [[ -n $st && $st != Z ]]; }

# Which cluster a Slurm process belongs to: the two-node daemons run with -f $CONF2, its job steps
# inside its network namespaces. Each mode stops only its own cluster's processes.
cluster_of() {
  if [[ $(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) == *"$CONF2"* ]] \
     || [[ $(readlink "/proc/$1/ns/net" 2>/dev/null) != "$(readlink /proc/$$/ns/net)" ]]; then
    echo 2
  else
    echo 1
  fi
}

# pids of a daemon: from its pid file (if the pid still runs that exe), else by exact exe name
# (of this mode's cluster).
daemon_pids() {
  local pf=$1 name=$2 pid
  if [[ -f $pf ]]; then
    pid=$(cat "$pf" 2>/dev/null)
    if [[ $pid =~ ^[0-9]+$ ]] && running "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
      echo "$pid"
      return
    fi
  fi
  local p
  for p in $(pidof -- "$name" 2>/dev/null); do   # exact executable name match only
    running "$p" && [[ $(cluster_of "$p") == "$NODES" ]] && echo "$p"
  done
}

# stop_daemons <pidfile> <name> [<pidfile> <name> ...]: SIGTERM all of them at once, wait up to
# GRACE seconds for all to exit, then SIGKILL the rest.
stop_daemons() {
  local all=() pfs=() pids p deadline
  while (( $# >= 2 )); do
    pids=$(daemon_pids "$1" "$2")
    if [[ -n $pids ]]; then
      log "stopping $2 ($(echo $pids))"
      for p in $pids; do kill -TERM "$p" 2>/dev/null || true; all+=("$p:$2"); done
    fi
    pfs+=("$1")
    shift 2
  done
  deadline=$(( $(date +%s) + GRACE ))
  for p in "${all[@]}"; do
    while running "${p%%:*}"; do
      if (( $(date +%s) >= deadline )); then
        log "${p#*:} (${p%%:*}) did not stop after ${GRACE}s, sending SIGKILL"
        kill -KILL "${p%%:*}" 2>/dev/null || true
        sleep 0.5
        break
      fi
      sleep 0.1
    done
  done
  for p in "${pfs[@]}"; do rm -f "$p"; done
}

# ---------------------------------------------------------------- cancel jobs
cancel_jobs() {
  command -v scontrol >/dev/null 2>&1 && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' || return 0
  local jobs deadline
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  [[ -n ${jobs// /} ]] || return 0
  log "cancelling jobs: $jobs"
  # shellcheck disable=SC2086
  timeout 15 scancel $jobs 2>/dev/null || true
  deadline=$(( $(date +%s) + 15 ))
  while [[ -n $(timeout 5 squeue -h -o %A 2>/dev/null) ]] && (( $(date +%s) < deadline )); do
    sleep 0.5
  done
}

# ---------------------------------------------------------------- two-node cluster
if (( NODES == 2 )); then
  cancel_jobs
  stop_daemons "$RUNDIR2/slurmd-${NODE_NAMES[0]}.pid" slurmd "$RUNDIR2/slurmd-${NODE_NAMES[1]}.pid" slurmd \
    "$RUNDIR2/slurmctld.pid" slurmctld
  # Whatever still runs in a node's namespace (slurmstepd, job processes) belongs to this cluster.
  for ns in "${NODE_NAMES[@]}"; do
    [[ -e /run/netns/$ns ]] || continue
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    if [[ -n ${pids// /} ]]; then
      log "killing processes left in namespace $ns: $pids"
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
    # Deleting the namespace also deletes its veth pair.
    ip netns del "$ns" 2>/dev/null || log "could not delete namespace $ns"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  log "two-node cluster stopped (munged, MariaDB, slurmdbd left running)"
  exit 0
fi

# ---------------------------------------------------------------- one-node cluster
cancel_jobs
stop_daemons "$RUNDIR/slurmd.pid" slurmd "$RUNDIR/slurmctld.pid" slurmctld
# Leftover step daemons of jobs that did not finish in time: kill their whole process tree
# (job processes first, so they are not orphaned), then the slurmstepd itself.
descendants() { local c; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do descendants "$c"; echo "$c"; done; }
for p in $(pidof slurmstepd 2>/dev/null); do
  [[ $(cluster_of "$p") == 1 ]] || continue   # a step of the two-node cluster
  log "killing leftover slurmstepd $p and its processes"
  for c in $(descendants "$p"); do kill -KILL "$c" 2>/dev/null || true; done
  kill -KILL "$p" 2>/dev/null || true
done
# slurmdbd last, so that slurmctld could flush its final job records to it.
stop_daemons "$RUNDIR/slurmdbd.pid" slurmdbd

if [[ ${SLURM_LOCAL_KEEP_BASE:-0} == 1 ]]; then
  exit 0
fi

# ---------------------------------------------------------------- mariadb + munge
# mariadbd shuts down cleanly on SIGTERM (same as mysqladmin shutdown).
# The two-node cluster, if up, loses its accounting and authentication until up.sh restarts them.
stop_daemons /run/mysqld/mysqld.pid mariadbd /run/munge/munged.pid munged

log "cluster stopped"
exit 0
