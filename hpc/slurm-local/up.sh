#!/usr/bin/env bash
# Bring up a real Slurm cluster on localhost (Debian 12, root, no systemd).
#
#   up.sh              one-node cluster 'localcluster' (the default; /etc/slurm/slurm.conf)
#   up.sh --nodes 2    two-node cluster 'twonode' (/etc/slurm-2node/slurm.conf): slurmctld in the
#                      root network namespace, one slurmd per network + UTS namespace (srn1, srn2)
#
#   shared base:  munged -> mariadbd -> slurmdbd
#   per cluster:  (sacctmgr cluster/account/user) -> [network namespaces] -> slurmctld -> slurmd(s)
#
# Idempotent: if the cluster already answers (scontrol ping, node(s) idle/mixed/alloc in sinfo,
# sacct) with the same rendered configuration, exits 0 within a fraction of a second.
# If the rendered configuration changed, the Slurm daemons are restarted with the new one.
# Any daemon that is not running is (re)started; ones that are running are left alone.
#
# Environment overrides:
#   SLURM_LOCAL_CLUSTER     one-node cluster name         (default: localcluster)
#   SLURM_LOCAL_TIMEOUT     seconds to wait per step      (default: 60)
#   SLURM_LOCAL_REALMEMORY  node RealMemory in MB         (default: from `slurmd -C`)
#   SLURM_LOCAL_CPUS        CPUs of each node             (default: from `slurmd -C` / nproc)
set -euo pipefail

usage() { echo "usage: up.sh [--nodes 1|2]" >&2; exit 2; }
NODES=1
case $# in
  0) ;;
  1) [[ $1 == --nodes=* ]] || usage; NODES=${1#--nodes=} ;;
  2) [[ $1 == --nodes ]] || usage; NODES=$2 ;;
  *) usage ;;
esac
[[ $NODES == 1 || $NODES == 2 ]] || usage

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER=${SLURM_LOCAL_CLUSTER:-localcluster}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
HOST=$(hostname -s)
DBNAME=slurm_acct_db
DBUSER=slurm
DBPASS=slurm_local_pw   # local-only MariaDB bound to 127.0.0.1; not a secret

ETC=/etc/slurm
LOGDIR=/var/log/slurm
RUNDIR=/run/slurm
LOCK=/run/lock/slurm-local.lock

# Two-node cluster (keep in step with down.sh and slurm-2node.conf.in).
CLUSTER2=twonode
ETC2=/etc/slurm-2node
RUNDIR2=/run/slurm-2node
SPOOL2=/var/spool/slurmd-2node
BRIDGE=srbr0
CTLD_ADDR=10.77.0.1
NODE_NAMES=(srn1 srn2)
NODE_ADDRS=(10.77.0.11 10.77.0.12)

# Slurm clients in this script talk to the cluster being brought up, whatever the caller exported.
if (( NODES == 2 )); then export SLURM_CONF=$ETC2/slurm.conf; else export SLURM_CONF=$ETC/slurm.conf; fi

# Daemons get a minimal, predictable environment (not the caller's venv, LD_LIBRARY_PATH, ...).
DAEMON_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root)

log() { echo "up.sh: $*" >&2; }

fail() {
  # fail <message> [logfile...]
  local msg=$1; shift
  echo "up.sh: ERROR: $msg" >&2
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then
      echo "----- last 40 lines of $f -----" >&2
      tail -n 40 "$f" >&2 || true
    else
      echo "----- ($f does not exist) -----" >&2
    fi
  done
  exit 1
}

if [[ $(id -u) -ne 0 ]]; then
  echo "up.sh: must run as root" >&2
  exit 1
fi
for b in slurmctld slurmd slurmdbd munged mariadbd sinfo sacct sacctmgr; do
  command -v "$b" >/dev/null 2>&1 || fail "$b not found; run: bash $HERE/install.sh"
done
if (( NODES == 2 )); then
  for b in ip nsenter unshare; do command -v "$b" >/dev/null 2>&1 || fail "$b not found (iproute2, util-linux)"; done
fi

# ---------------------------------------------------------------- render configs
hw=$(slurmd -C 2>/dev/null | head -n 1 || true)
hw_field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
CPUS=${SLURM_LOCAL_CPUS:-$(hw_field CPUs)}
CPUS=${CPUS:-$(nproc --all)}
MEM=${SLURM_LOCAL_REALMEMORY:-$(hw_field RealMemory)}
MEM=${MEM:-$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))}

TMPD=$(mktemp -d)
trap 'rm -rf "$TMPD"' EXIT
sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" \
  "$HERE/slurm.conf.in" >"$TMPD/slurm.conf"
sed -e "s|@DBNAME@|$DBNAME|g" -e "s|@DBUSER@|$DBUSER|g" -e "s|@DBPASS@|$DBPASS|g" \
  "$HERE/slurmdbd.conf.in" >"$TMPD/slurmdbd.conf"
sed -e "s|@CLUSTER@|$CLUSTER2|g" -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" \
  -e "s|@BRIDGE@|$BRIDGE|g" -e "s|@CTLD_ADDR@|$CTLD_ADDR|g" \
  -e "s|@NODE1@|${NODE_NAMES[0]}|g" -e "s|@NODE1_ADDR@|${NODE_ADDRS[0]}|g" \
  -e "s|@NODE2@|${NODE_NAMES[1]}|g" -e "s|@NODE2_ADDR@|${NODE_ADDRS[1]}|g" \
  "$HERE/slurm-2node.conf.in" >"$TMPD/slurm-2node.conf"

dbd_conf_current() { cmp -s "$TMPD/slurmdbd.conf" "$ETC/slurmdbd.conf"; }
configs_current() { cmp -s "$TMPD/slurm.conf" "$ETC/slurm.conf" && dbd_conf_current; }
configs2_current() { cmp -s "$TMPD/slurm-2node.conf" "$ETC2/slurm.conf" && dbd_conf_current; }

node_state() { timeout 5 sinfo -h -n "$1" -o %T 2>/dev/null | head -n 1; }
node_ready() {
  # node_ready [node]: the node answers and can take jobs
  local st
  st=$(node_state "${1:-$HOST}") || return 1
  [[ $st =~ ^(idle|mixed|allocated|completing|planned)$ ]]
}
sacct_ready() { timeout 10 sacct -n -X -S now </dev/null >/dev/null 2>&1; }
ctld_ok() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }
cluster_ready() { ctld_ok && node_ready && sacct_ready; }

# The bridge is up and each namespace has its address.
net_ready() {
  [[ -n $(ip link show up dev "$BRIDGE" 2>/dev/null) ]] || return 1
  local i
  for i in "${!NODE_NAMES[@]}"; do
    [[ $(ip -n "${NODE_NAMES[i]}" -4 addr show dev eth0 2>/dev/null) == *"inet ${NODE_ADDRS[i]}/"* ]] || return 1
  done
}
cluster2_ready() {
  net_ready && ctld_ok || return 1
  local n
  for n in "${NODE_NAMES[@]}"; do node_ready "$n" || return 1; done
  sacct_ready
}

if (( NODES == 2 )); then
  all_ready() { configs2_current && cluster2_ready; }
  UP_NAME=$CLUSTER2
else
  all_ready() { configs_current && cluster_ready; }
  UP_NAME=$CLUSTER
fi

# ---------------------------------------------------------------- fast path
if all_ready; then
  echo "up.sh: cluster '$UP_NAME' already up"
  exit 0
fi

# Serialize concurrent callers (e.g. several test workers; both clusters share the base daemons).
# Every daemon is started with 9>&- so that it does not inherit (and hold forever) this lock.
mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock -w 300 9 || fail "could not get lock $LOCK"
if all_ready; then
  echo "up.sh: cluster '$UP_NAME' already up"
  exit 0
fi

START=$(date +%s)

pid_alive() {
  # pid_alive <pidfile> <exe name>
  local pf=$1 name=$2 pid
  [[ -f $pf ]] || return 1
  pid=$(cat "$pf" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  local st
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z ]] || return 1   # zombie: dead, just not reaped yet
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

wait_for() {
  # wait_for <description> <command...>; returns 1 on timeout
  local what=$1; shift
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then
      log "timed out after ${TIMEOUT}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

base_dirs() {
  install -d -m 0755 "$ETC" "$LOGDIR" "$RUNDIR"
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o mysql -g mysql -m 0755 /run/mysqld
}

host_entry() {
  # host_entry <addr> <name>: make <name> resolve (slurmd must resolve its NodeName)
  local have
  have=$(getent hosts "$2" | awk '{print $1; exit}') || true
  [[ $have == "$1" ]] && return 0
  [[ -z $have ]] || fail "'$2' resolves to $have, not $1; fix /etc/hosts"
  log "adding '$2' to /etc/hosts"
  echo "$1 $2" >>/etc/hosts
}

# ---------------------------------------------------------------- shared base
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
db_ok() { mysqladmin --protocol=socket -uroot ping >/dev/null 2>&1; }
dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster </dev/null >/dev/null 2>&1; }
dbd_stopped() { ! pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd; }

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key --force
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key

  munge_ok && return 0
  log "starting munged"
  # --force: remove a stale socket left by an unclean stop.
  "${DAEMON_ENV[@]}" runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOGDIR/munged.start.log" 2>&1 9>&- \
    || fail "munged failed to start" "$LOGDIR/munged.start.log" /var/log/munge/munged.log
  wait_for "munge" munge_ok || fail "munge does not work" /var/log/munge/munged.log
}

start_mariadb() {
  if ! db_ok; then
    if [[ ! -d /var/lib/mysql/mysql ]]; then
      log "initialising MariaDB data directory"
      mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOGDIR/mariadb.start.log" 2>&1 \
        || fail "mariadb-install-db failed" "$LOGDIR/mariadb.start.log"
    fi
    log "starting mariadbd"
    # Run mariadbd directly (Debian's mysqld_safe logs to syslog, which does not exist here).
    "${DAEMON_ENV[@]}" setsid /usr/sbin/mariadbd --user=mysql \
      --log-error="$LOGDIR/mariadb.log" --pid-file=/run/mysqld/mysqld.pid \
      --bind-address=127.0.0.1 --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=256M \
      </dev/null >>"$LOGDIR/mariadb.start.log" 2>&1 9>&- &
    disown || true
    wait_for "MariaDB" db_ok || fail "MariaDB did not start" "$LOGDIR/mariadb.log" "$LOGDIR/mariadb.start.log"
  fi
  mysql --protocol=socket -uroot <<SQL || fail "could not create database $DBNAME" "$LOGDIR/mariadb.log"
CREATE DATABASE IF NOT EXISTS \`$DBNAME\`;
CREATE USER IF NOT EXISTS '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER '$DBUSER'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL PRIVILEGES ON \`$DBNAME\`.* TO '$DBUSER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
  if ! pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd; then
    log "starting slurmdbd"
    "${DAEMON_ENV[@]}" /usr/sbin/slurmdbd </dev/null >>"$LOGDIR/slurmdbd.start.log" 2>&1 9>&- \
      || fail "slurmdbd failed to start" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmdbd.start.log"
  fi
  wait_for "slurmdbd" dbd_ok || fail "slurmdbd does not answer" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmdbd.start.log"
}

# munge, MariaDB and slurmdbd: shared by both clusters.
base_up() {
  start_munge
  start_mariadb
  start_slurmdbd
}

# sacctmgr always gets </dev/null and a timeout: on a bad command line it falls into its
# interactive prompt and spins on EOF forever.
sam() { timeout 30 sacctmgr "$@" </dev/null; }

register_cluster() {
  # register_cluster <name>: the cluster, account root and user root in slurmdbd
  local c=$1
  if ! sam -n -P list cluster format=cluster 2>/dev/null | grep -qx "$c"; then
    log "registering cluster $c"
    sam -i add cluster "$c" >/dev/null || fail "sacctmgr add cluster failed" "$LOGDIR/slurmdbd.log"
  fi
  # Adding a cluster creates account 'root' with user 'root'; re-create them if someone removed them.
  if ! sam -n -P list assoc cluster="$c" format=account 2>/dev/null | grep -qx root; then
    sam -i add account root cluster="$c" description=root organization=root >/dev/null || true
  fi
  if ! sam -n -P list assoc cluster="$c" user=root format=user 2>/dev/null | grep -qx root; then
    log "adding user root to account root"
    sam -i add user root account=root cluster="$c" >/dev/null \
      || fail "sacctmgr add user root failed" "$LOGDIR/slurmdbd.log"
  fi
}

# A node left DOWN/DRAINED by an earlier unclean stop is resumed once.
node_ready_or_resume() {
  local n=$1 st
  node_ready "$n" && return 0
  st=$(node_state "$n") || return 1
  if (( ! resumed )) && [[ $st =~ ^(down|drain|drained|draining|fail)$ ]]; then
    scontrol update nodename="$n" state=resume >/dev/null 2>&1 && resumed=1
  fi
  return 1
}
wait_node() {
  # wait_node <node> <logfile...>
  local n=$1; shift
  resumed=0
  wait_for "node $n to become idle" node_ready_or_resume "$n" \
    || fail "node $n not ready: $(sinfo -h -N -o '%N %T %E' 2>&1)" "$@"
}

# ---------------------------------------------------------------- one-node cluster
one_node_up() {
  base_dirs
  install -d -m 0755 /var/spool/slurmctld /var/spool/slurmd

  # If the config changed while Slurm daemons are running, stop them so they pick it up.
  if ! configs_current; then
    if pid_alive "$RUNDIR/slurmctld.pid" slurmctld || pid_alive "$RUNDIR/slurmd.pid" slurmd \
       || pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd; then
      log "configuration changed: restarting Slurm daemons"
      SLURM_LOCAL_KEEP_BASE=1 bash "$HERE/down.sh"
    fi
    install -m 0644 -o root -g root "$TMPD/slurm.conf" "$ETC/slurm.conf"
    install -m 0600 -o root -g root "$TMPD/slurmdbd.conf" "$ETC/slurmdbd.conf"  # SlurmUser=root; must be 600
  fi

  # Hostname must resolve for slurmd to find its NodeName (NodeAddr is 127.0.0.1 anyway).
  if ! getent hosts "$HOST" >/dev/null 2>&1; then
    log "adding '$HOST' to /etc/hosts"
    echo "127.0.0.1 $HOST" >>/etc/hosts
  fi

  base_up
  register_cluster "$CLUSTER"

  if ! pid_alive "$RUNDIR/slurmctld.pid" slurmctld; then
    log "starting slurmctld"
    "${DAEMON_ENV[@]}" /usr/sbin/slurmctld </dev/null >>"$LOGDIR/slurmctld.start.log" 2>&1 9>&- \
      || fail "slurmctld failed to start" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmctld.start.log"
  fi
  wait_for "slurmctld" ctld_ok || fail "slurmctld does not answer" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmctld.start.log"

  if ! pid_alive "$RUNDIR/slurmd.pid" slurmd; then
    log "starting slurmd"
    "${DAEMON_ENV[@]}" /usr/sbin/slurmd </dev/null >>"$LOGDIR/slurmd.start.log" 2>&1 9>&- \
      || fail "slurmd failed to start" "$LOGDIR/slurmd.log" "$LOGDIR/slurmd.start.log"
  fi
  wait_node "$HOST" "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log"
  wait_for "sacct" sacct_ready || fail "sacct does not answer" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmctld.log"

  echo "up.sh: cluster '$CLUSTER' up on $HOST (CPUs=$CPUS RealMemory=$MEM) in $(( $(date +%s) - START ))s"
}

# ---------------------------------------------------------------- two-node cluster
# slurmdbd.conf is shared: normally the one-node path installed it already. A changed one needs a
# slurmdbd restart (the two-node slurmctld reconnects by itself).
install_dbd_conf() {
  dbd_conf_current && return 0
  if pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd; then
    log "slurmdbd.conf changed: restarting slurmdbd"
    kill -TERM "$(cat "$RUNDIR/slurmdbd.pid")"
    wait_for "slurmdbd to stop" dbd_stopped || fail "slurmdbd did not stop" "$LOGDIR/slurmdbd.log"
  fi
  install -m 0600 -o root -g root "$TMPD/slurmdbd.conf" "$ETC/slurmdbd.conf"  # SlurmUser=root; must be 600
}

two_node_running() {
  local n
  pid_alive "$RUNDIR2/slurmctld.pid" slurmctld && return 0
  for n in "${NODE_NAMES[@]}"; do pid_alive "$RUNDIR2/slurmd-$n.pid" slurmd && return 0; done
  return 1
}

two_node_config() {
  install -d -m 0755 "$ETC2" "$RUNDIR2" /var/spool/slurmctld-2node
  local n
  for n in "${NODE_NAMES[@]}"; do install -d -m 0755 "$SPOOL2/$n" "$SPOOL2/$n/tmp"; done
  if ! cmp -s "$TMPD/slurm-2node.conf" "$ETC2/slurm.conf"; then
    if two_node_running; then
      log "configuration changed: restarting the two-node cluster"
      bash "$HERE/down.sh" --nodes 2
      install -d -m 0755 "$RUNDIR2"
    fi
    install -m 0644 -o root -g root "$TMPD/slurm-2node.conf" "$ETC2/slurm.conf"
  fi
  install_dbd_conf
  # Names must resolve on every "host" (one /etc/hosts for all): slurmd looks up its NodeName, MPI its peers.
  host_entry "${NODE_ADDRS[0]}" "${NODE_NAMES[0]}"
  host_entry "${NODE_ADDRS[1]}" "${NODE_NAMES[1]}"
  host_entry "$CTLD_ADDR" srctl   # the controller as seen from a node, where `vm` is the node's own 127.0.0.1
  getent hosts "$HOST" >/dev/null 2>&1 || host_entry 127.0.0.1 "$HOST"
}

node_net_up() {
  # node_net_up <netns> <addr>: namespace with eth0 (veth to the bridge), lo, default route via the bridge
  local ns=$1 addr=$2 veth=veth-$1
  [[ -e /run/netns/$ns ]] || ip netns add "$ns"
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip link del "$veth" 2>/dev/null || true   # a root end whose peer went with an older namespace
    ip link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" addr replace "$addr/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$CTLD_ADDR"
}

net_up() {
  net_ready && return 0
  log "setting up bridge $BRIDGE and namespaces ${NODE_NAMES[*]}"
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$CTLD_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local i
  for i in "${!NODE_NAMES[@]}"; do node_net_up "${NODE_NAMES[i]}" "${NODE_ADDRS[i]}"; done
}

start_node() {
  # start_node <node>: slurmd in the node's network namespace and a UTS namespace of its own,
  # so that hostname, MPI and Open MPI's session directories (/tmp/ompi.<host>...) see a separate host.
  # nsenter, not `ip netns exec`: that remounts /sys without /sys/fs/cgroup, and slurmd then fails
  # ("Unable to initialize cgroup plugin").
  local n=$1
  pid_alive "$RUNDIR2/slurmd-$n.pid" slurmd && return 0
  log "starting slurmd $n"
  # shellcheck disable=SC2016  # $1/$2 are expanded by the inner sh
  "${DAEMON_ENV[@]}" nsenter --net="/run/netns/$n" unshare --uts \
    sh -c 'hostname "$1" && exec /usr/sbin/slurmd -f "$2" -N "$1"' sh "$n" "$ETC2/slurm.conf" \
    </dev/null >>"$LOGDIR/2node-slurmd-$n.start.log" 2>&1 9>&- \
    || fail "slurmd $n failed to start" "$LOGDIR/2node-slurmd-$n.log" "$LOGDIR/2node-slurmd-$n.start.log"
}

two_node_up() {
  base_dirs
  two_node_config
  net_up   # first: this cluster's clients (sacctmgr too) reach slurmdbd over the bridge
  base_up
  register_cluster "$CLUSTER2"

  if ! pid_alive "$RUNDIR2/slurmctld.pid" slurmctld; then
    log "starting slurmctld ($CLUSTER2)"
    "${DAEMON_ENV[@]}" /usr/sbin/slurmctld -f "$ETC2/slurm.conf" \
      </dev/null >>"$LOGDIR/2node-slurmctld.start.log" 2>&1 9>&- \
      || fail "slurmctld failed to start" "$LOGDIR/2node-slurmctld.log" "$LOGDIR/2node-slurmctld.start.log"
  fi
  wait_for "slurmctld ($CLUSTER2)" ctld_ok \
    || fail "slurmctld ($CLUSTER2) does not answer" "$LOGDIR/2node-slurmctld.log" "$LOGDIR/2node-slurmctld.start.log"

  local n
  for n in "${NODE_NAMES[@]}"; do start_node "$n"; done
  for n in "${NODE_NAMES[@]}"; do wait_node "$n" "$LOGDIR/2node-slurmd-$n.log" "$LOGDIR/2node-slurmctld.log"; done
  wait_for "sacct" sacct_ready || fail "sacct does not answer" "$LOGDIR/slurmdbd.log" "$LOGDIR/2node-slurmctld.log"

  echo "up.sh: cluster '$CLUSTER2' up on ${NODE_NAMES[*]} (${NODE_ADDRS[*]}; CPUs=$CPUS each)" \
    "in $(( $(date +%s) - START ))s; use SLURM_CONF=$ETC2/slurm.conf"
}

if (( NODES == 2 )); then two_node_up; else one_node_up; fi
