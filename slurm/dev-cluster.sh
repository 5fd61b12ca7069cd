#!/usr/bin/env bash
# Single-node dev SLURM cluster (Debian 12, root, no systemd).
#
#   bash slurm/dev-cluster.sh [start|stop|status|restart]     (default: start)
#
# start installs what is missing, renders slurm/conf/*.in into /etc/slurm and
# starts munged, mariadbd, slurmdbd, slurmctld and slurmd as plain background
# daemons, then runs a smoke check (srun + sacct). It is idempotent: on a
# running cluster it changes nothing and takes about a second. All daemon
# output goes to $DEV_SLURM_LOG_DIR, so piping this script never hangs.
#
# Environment knobs:
#   DEV_SLURM_RESET=1        stop slurm, wipe /var/spool/slurm* AND drop slurm_acct_db (CI)
#   DEV_SLURM_CPUS=8         CPUs the node advertises (more than the machine has, on purpose)
#   DEV_SLURM_MEM_MB=...     RealMemory (default 75 % of MemTotal)
#   DEV_SLURM_GPUS=2         fake h100 GPUs (/dev/fakegpu/nvidiaN)
#   DEV_SLURM_LOG_DIR=/var/log/dev-slurm
#   DEV_SLURM_TEMPLATES=<dir of this script>/conf
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES=${DEV_SLURM_TEMPLATES:-$HERE/conf}
LOG_DIR=${DEV_SLURM_LOG_DIR:-/var/log/dev-slurm}
CPUS=${DEV_SLURM_CPUS:-8}
GPUS=${DEV_SLURM_GPUS:-2}
MEM_MB=${DEV_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {print int($2 * 0.75 / 1024)}' /proc/meminfo)}
RESET=${DEV_SLURM_RESET:-0}
NODE=$(hostname -s)
ETC=/etc/slurm
DB_SOCKET=/run/mysqld/mysqld.sock
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop is the reverse
START_TIMEOUT_S=30

declare -A PID_FILE=(
  [munged]=/run/munge/munged.pid [mariadbd]=/run/mysqld/mysqld.pid
  [slurmdbd]=/run/slurmdbd.pid [slurmctld]=/run/slurmctld.pid [slurmd]=/run/slurmd.pid
)
declare -A LOG_FILE=(
  [munged]=$LOG_DIR/munged.log [mariadbd]=$LOG_DIR/mariadb.log
  [slurmdbd]=$LOG_DIR/slurmdbd.log [slurmctld]=$LOG_DIR/slurmctld.log [slurmd]=$LOG_DIR/slurmd.log
)
CHANGED_SLURM_CONF=0   # set by render_configs
CHANGED_DBD_CONF=0
RENDERED=0             # set by render

log() { printf '[dev-cluster] %s\n' "$*"; }

die() {  # die MESSAGE [LOG_FILE]: print the message and the log's tail, exit 1
  printf '[dev-cluster] ERROR: %s\n' "$1" >&2
  if [[ -n ${2:-} && -r $2 ]]; then
    printf -- '----- tail of %s -----\n' "$2" >&2
    tail -n 30 "$2" >&2
  fi
  exit 1
}

# ---------------------------------------------------------------- processes

is_live() {  # is_live PID NAME: running (not a zombie) and really NAME
  local pid=$1 name=$2
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/status ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

daemon_pid() {  # daemon_pid NAME: print the live pid (pid file first, then by exact name)
  local name=$1 pid
  pid=$(cat "${PID_FILE[$name]}" 2>/dev/null || true)
  if is_live "$pid" "$name"; then echo "$pid"; return 0; fi
  for pid in $(pgrep -x "$name" || true); do
    if is_live "$pid" "$name"; then echo "$pid"; return 0; fi
  done
  return 1
}

is_up() { daemon_pid "$1" >/dev/null; }

stop_daemon() {  # stop_daemon NAME: TERM, wait up to 15 s, then KILL; zombies count as gone
  local name=$1 pid i
  pid=$(daemon_pid "$name") || { rm -f "${PID_FILE[$name]}"; return 0; }
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do
    is_live "$pid" "$name" || break
    sleep 0.2
  done
  if is_live "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  rm -f "${PID_FILE[$name]}"
}

wait_ready() {  # wait_ready NAME CHECK...: poll CHECK until it passes; fail fast if NAME dies
  local name=$1 deadline=$((SECONDS + START_TIMEOUT_S)) started=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    if ! is_up "$name" && ((SECONDS - started >= 2)); then
      die "$name died while starting" "${LOG_FILE[$name]}"
    fi
    ((SECONDS < deadline)) || die "$name not ready after ${START_TIMEOUT_S} s" "${LOG_FILE[$name]}"
    sleep 0.2
  done
}

# ---------------------------------------------------------------- install

install_packages() {
  local missing=0 bin
  for bin in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$bin" >/dev/null || missing=1
  done
  ((missing)) || return 0
  log "installing ${PACKAGES[*]} (log: $LOG_DIR/apt.log)"
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # keep maintainer scripts from starting services
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt_install || { apt-get update >>"$LOG_DIR/apt.log" 2>&1 && apt_install; } ||
    { ((own_policy)) && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed" "$LOG_DIR/apt.log"; }
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  return 0
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${PACKAGES[@]}" </dev/null >>"$LOG_DIR/apt.log" 2>&1
}

# ---------------------------------------------------------------- config

render() {  # render TEMPLATE DEST MODE: substitute @KEY@; replace DEST (RENDERED=1) only if it changed
  local template=$1 dest=$2 mode=$3 tmp="$2.tmp.$$"
  RENDERED=0
  sed -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
    -e "s|@GPUS@|$GPUS|g" -e "s|@GPU_LAST@|$((GPUS - 1))|g" -e "s|@LOG_DIR@|$LOG_DIR|g" \
    "$template" >"$tmp"
  local unknown
  unknown=$(grep -o '@[A-Z_]*@' "$tmp" | sort -u | tr '\n' ' ' || true)
  if [[ -n $unknown ]]; then
    rm -f "$tmp"
    die "unknown placeholder(s) $unknown in $template"
  fi
  chmod "$mode" "$tmp"
  if cmp -s "$tmp" "$dest"; then rm -f "$tmp"; return 0; fi
  mv -f "$tmp" "$dest"
  RENDERED=1
  log "wrote $dest"
}

render_configs() {
  mkdir -p "$ETC"
  render "$TEMPLATES/slurm.conf.in" "$ETC/slurm.conf" 644
  CHANGED_SLURM_CONF=$RENDERED
  render "$TEMPLATES/gres.conf.in" "$ETC/gres.conf" 644
  CHANGED_SLURM_CONF=$((CHANGED_SLURM_CONF | RENDERED))
  # slurmdbd refuses to start unless its config is mode 600.
  render "$TEMPLATES/slurmdbd.conf.in" "$ETC/slurmdbd.conf" 600
  CHANGED_DBD_CONF=$RENDERED
}

prepare_host() {
  local i dev
  [[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "DEV_SLURM_GPUS must be >= 1, got '$GPUS'"
  getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >>/etc/hosts
  # /dev is rebuilt at boot; slurmd needs character devices (clones of /dev/null).
  mkdir -p /dev/fakegpu
  for ((i = 0; i < GPUS; i++)); do
    dev=/dev/fakegpu/nvidia$i
    [[ -c $dev ]] && continue
    rm -f "$dev"
    mknod "$dev" c 1 3
  done
  # What systemd's RuntimeDirectory= would create.
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o mysql -g mysql -m 755 /run/mysqld
  install -d -m 755 /var/spool/slurmctld /var/spool/slurmd
}

# ---------------------------------------------------------------- daemons

start_munged() {
  is_up munged && return 0
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  log "starting munged"
  touch "${LOG_FILE[munged]}"
  chown munge:munge "${LOG_FILE[munged]}"  # munged refuses a log file it does not own
  # --force: reuse a stale socket left by a killed munged.
  runuser -u munge -- munged --force --log-file="${LOG_FILE[munged]}" \
    </dev/null >>"${LOG_FILE[munged]}" 2>&1 || die "munged failed to start" "${LOG_FILE[munged]}"
  wait_ready munged bash -c 'munge -n | unmunge'
}

db_query() { mariadb --socket="$DB_SOCKET" -u root -N -e "$1"; }

start_mariadbd() {
  is_up mariadbd && return 0
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
      >>"${LOG_FILE[mariadbd]}" 2>&1 || die "mariadb-install-db failed" "${LOG_FILE[mariadbd]}"
  fi
  log "starting mariadbd"
  touch "${LOG_FILE[mariadbd]}"
  chown mysql:mysql "${LOG_FILE[mariadbd]}"
  # mariadbd does not daemonize: setsid + & detaches it from this script's terminal/pipe.
  setsid mariadbd --user=mysql --skip-networking --socket="$DB_SOCKET" \
    --pid-file="${PID_FILE[mariadbd]}" --log-error="${LOG_FILE[mariadbd]}" \
    --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 \
    </dev/null >>"${LOG_FILE[mariadbd]}" 2>&1 &
  wait_ready mariadbd db_query 'SELECT 1'
}

dbd_port_open() { (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null; }

start_slurmdbd() {
  is_up slurmdbd && return 0
  log "starting slurmdbd"
  slurmdbd </dev/null >>"${LOG_FILE[slurmdbd]}" 2>&1 ||
    die "slurmdbd failed to start" "${LOG_FILE[slurmdbd]}"
  wait_ready slurmdbd dbd_port_open
}

ctld_up() { scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
  is_up slurmctld && return 0
  log "starting slurmctld"
  # slurmctld forks before some fatal checks (TRES gres/gpu without slurmdbd), so exit
  # code 0 proves little: wait_ready watches the pid and shows the log if it dies.
  slurmctld </dev/null >>"${LOG_FILE[slurmctld]}" 2>&1 ||
    die "slurmctld failed to start" "${LOG_FILE[slurmctld]}"
  wait_ready slurmctld ctld_up
}

node_state() { sinfo -h -N -n "$NODE" -o %T | head -n 1; }

node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmd() {
  if ! is_up slurmd; then
    log "starting slurmd"
    slurmd </dev/null >>"${LOG_FILE[slurmd]}" 2>&1 || die "slurmd failed to start" "${LOG_FILE[slurmd]}"
  fi
  resume_node_if_down
  wait_ready slurmd node_ready
}

resume_node_if_down() {  # a node left down/drained by an earlier crash does not come back alone
  local state
  state=$(node_state 2>/dev/null || true)
  [[ $state =~ ^(down|drain|drained|draining)$ ]] || return 0
  log "node $NODE is $state; resuming it"
  scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
}

restart_for_new_config() {  # daemons already running keep their old config otherwise
  if ((CHANGED_DBD_CONF)); then stop_daemon slurmdbd; fi
  if ((CHANGED_SLURM_CONF || CHANGED_DBD_CONF)); then stop_daemon slurmd; stop_daemon slurmctld; fi
  return 0
}

reset_state() {  # spool and accounting DB must go together, or sacct sees duplicate job ids
  log "DEV_SLURM_RESET=1: wiping /var/spool/slurm* and dropping slurm_acct_db"
  stop_daemon slurmd
  stop_daemon slurmctld
  stop_daemon slurmdbd
  start_mariadbd
  db_query 'DROP DATABASE IF EXISTS slurm_acct_db' ||
    die "could not drop slurm_acct_db" "${LOG_FILE[mariadbd]}"
  rm -rf /var/spool/slurm*
  install -d -m 755 /var/spool/slurmctld /var/spool/slurmd
}

# ---------------------------------------------------------------- checks

smoke_check() {  # one srun on debug, then sacct must list that job as COMPLETED
  local job_id deadline=$((SECONDS + 15))
  if [[ $(node_state) == allocated ]]; then  # busy with others' jobs: srun would only wait
    log "node fully allocated; smoke check is sacct only"
    sacct -n -X -S now-1minutes >/dev/null 2>>"$LOG_DIR/smoke.log" ||
      die "smoke check: sacct failed" "$LOG_DIR/smoke.log"
    return 0
  fi
  job_id=$(timeout 60 srun -p debug -J dev-smoke -t 1 --immediate=30 printenv SLURM_JOB_ID \
    2>>"$LOG_DIR/smoke.log") || die "smoke check 'srun -p debug' failed" "$LOG_DIR/smoke.log"
  # sacct is fed asynchronously by slurmctld: poll, never read once.
  until [[ $(sacct -n -X -P -j "$job_id" -o State 2>>"$LOG_DIR/smoke.log") == COMPLETED ]]; do
    ((SECONDS < deadline)) ||
      die "smoke check: sacct never showed job $job_id COMPLETED" "${LOG_FILE[slurmdbd]}"
    sleep 0.1
  done
}

cmd_status() {
  local name pid rc=0
  for name in "${DAEMONS[@]}"; do
    if pid=$(daemon_pid "$name"); then
      printf '%-10s up    (pid %s)\n' "$name" "$pid"
    else
      printf '%-10s DOWN  (log: %s)\n' "$name" "${LOG_FILE[$name]}"
      rc=1
    fi
  done
  if ! is_up slurmctld; then return 1; fi
  sinfo || rc=1
  node_ready || { echo "node $NODE is not usable: $(node_state)"; rc=1; }
  return $rc
}

cmd_stop() {
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[$i]}"; done
  log "dev cluster stopped"
}

cmd_start() {
  local t0=$EPOCHREALTIME
  mkdir -p "$LOG_DIR"
  install_packages
  prepare_host
  render_configs
  restart_for_new_config
  start_munged
  if [[ $RESET == 1 ]]; then reset_state; fi
  start_mariadbd
  start_slurmdbd
  start_slurmctld
  start_slurmd
  smoke_check
  log "dev cluster up in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') s"
}

main() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  case ${1:-start} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    *) die "usage: $0 [start|stop|status|restart]" ;;
  esac
}

main "$@"
