#!/usr/bin/env bash
# Bring up a real one-node Slurm cluster on localhost (Debian 12, root, no systemd).
#
#   munged -> mariadbd -> slurmdbd -> (sacctmgr cluster/account/user) -> slurmctld -> slurmd
#
# Idempotent: if the cluster already answers (scontrol ping, node idle/mixed/alloc in sinfo,
# sacct) with the same rendered configuration, exits 0 within a fraction of a second.
# If the rendered configuration changed, the Slurm daemons are restarted with the new one.
# Any daemon that is not running is (re)started; ones that are running are left alone.
#
# Environment overrides:
#   SLURM_LOCAL_CLUSTER     cluster name                  (default: localcluster)
#   SLURM_LOCAL_TIMEOUT     seconds to wait per step      (default: 60)
#   SLURM_LOCAL_REALMEMORY  node RealMemory in MB         (default: from `slurmd -C`)
#   SLURM_LOCAL_CPUS        node CPUs                     (default: from `slurmd -C` / nproc)
set -euo pipefail

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

configs_current() {
  cmp -s "$TMPD/slurm.conf" "$ETC/slurm.conf" && cmp -s "$TMPD/slurmdbd.conf" "$ETC/slurmdbd.conf"
}

node_ready() {
  local st
  st=$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1) || return 1
  [[ $st =~ ^(idle|mixed|allocated|completing|planned)$ ]]
}
sacct_ready() { timeout 10 sacct -n -X -S now </dev/null >/dev/null 2>&1; }
cluster_ready() {
  timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && node_ready && sacct_ready
}

# ---------------------------------------------------------------- fast path
if configs_current && cluster_ready; then
  echo "up.sh: cluster '$CLUSTER' already up"
  exit 0
fi

# Serialize concurrent callers (e.g. several test workers). Every daemon is started with 9>&-
# so that it does not inherit (and hold forever) this lock.
mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock -w 300 9 || fail "could not get lock $LOCK"
if configs_current && cluster_ready; then
  echo "up.sh: cluster '$CLUSTER' already up"
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

# ---------------------------------------------------------------- dirs + configs
install -d -m 0755 "$ETC" "$LOGDIR" "$RUNDIR" /var/spool/slurmctld /var/spool/slurmd
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o mysql -g mysql -m 0755 /run/mysqld

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

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  mungekey --create --keyfile=/etc/munge/munge.key --force
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  log "starting munged"
  # --force: remove a stale socket left by an unclean stop.
  "${DAEMON_ENV[@]}" runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOGDIR/munged.start.log" 2>&1 9>&- \
    || fail "munged failed to start" "$LOGDIR/munged.start.log" /var/log/munge/munged.log
  wait_for "munge" munge_ok || fail "munge does not work" /var/log/munge/munged.log
fi

# ---------------------------------------------------------------- mariadb
db_ok() { mysqladmin --protocol=socket -uroot ping >/dev/null 2>&1; }
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

# ---------------------------------------------------------------- slurmdbd
dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster </dev/null >/dev/null 2>&1; }
if ! pid_alive "$RUNDIR/slurmdbd.pid" slurmdbd; then
  log "starting slurmdbd"
  "${DAEMON_ENV[@]}" /usr/sbin/slurmdbd </dev/null >>"$LOGDIR/slurmdbd.start.log" 2>&1 9>&- \
    || fail "slurmdbd failed to start" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmdbd.start.log"
fi
wait_for "slurmdbd" dbd_ok || fail "slurmdbd does not answer" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmdbd.start.log"

# ---------------------------------------------------------------- accounting objects
# sacctmgr always gets </dev/null and a timeout: on a bad command line it falls into its
# interactive prompt and spins on EOF forever.
sam() { timeout 30 sacctmgr "$@" </dev/null; }
if ! sam -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
  log "registering cluster $CLUSTER"
  sam -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed" "$LOGDIR/slurmdbd.log"
fi
# Adding a cluster creates account 'root' with user 'root'; re-create them if someone removed them.
if ! sam -n -P list assoc cluster="$CLUSTER" format=account 2>/dev/null | grep -qx root; then
  sam -i add account root cluster="$CLUSTER" description=root organization=root >/dev/null || true
fi
if ! sam -n -P list assoc cluster="$CLUSTER" user=root format=user 2>/dev/null | grep -qx root; then
  log "adding user root to account root"
  sam -i add user root account=root cluster="$CLUSTER" >/dev/null \
    || fail "sacctmgr add user root failed" "$LOGDIR/slurmdbd.log"
fi

# ---------------------------------------------------------------- slurmctld
ctld_ok() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }
if ! pid_alive "$RUNDIR/slurmctld.pid" slurmctld; then
  log "starting slurmctld"
  "${DAEMON_ENV[@]}" /usr/sbin/slurmctld </dev/null >>"$LOGDIR/slurmctld.start.log" 2>&1 9>&- \
    || fail "slurmctld failed to start" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmctld.start.log"
fi
wait_for "slurmctld" ctld_ok || fail "slurmctld does not answer" "$LOGDIR/slurmctld.log" "$LOGDIR/slurmctld.start.log"

# ---------------------------------------------------------------- slurmd
if ! pid_alive "$RUNDIR/slurmd.pid" slurmd; then
  log "starting slurmd"
  "${DAEMON_ENV[@]}" /usr/sbin/slurmd </dev/null >>"$LOGDIR/slurmd.start.log" 2>&1 9>&- \
    || fail "slurmd failed to start" "$LOGDIR/slurmd.log" "$LOGDIR/slurmd.start.log"
fi

# A node left DOWN/DRAINED by an earlier unclean stop is resumed once.
resumed=0
node_ready_or_resume() {
  node_ready && return 0
  local st
  st=$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1) || return 1
  if (( ! resumed )) && [[ $st =~ ^(down|drain|drained|draining|fail)$ ]]; then
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 && resumed=1
  fi
  return 1
}
wait_for "node $HOST to become idle" node_ready_or_resume \
  || fail "node $HOST not ready: $(sinfo -h -N -o '%N %T %E' 2>&1)" "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log"
wait_for "sacct" sacct_ready || fail "sacct does not answer" "$LOGDIR/slurmdbd.log" "$LOGDIR/slurmctld.log"

echo "up.sh: cluster '$CLUSTER' up on $HOST (CPUs=$CPUS RealMemory=$MEM) in $(( $(date +%s) - START ))s"
