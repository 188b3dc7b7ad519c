#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (munge, MariaDB + slurmdbd for sacct, slurmctld,
# slurmd, two fake GPUs), for the project's `-m slurm` tests and CI. Follows ../shared/slurm/README.md.
#   scripts/local-slurm.sh up       install (first time) and start; prints sinfo when ready
#   scripts/local-slurm.sh down     stop the daemons (add --purge to wipe state and the accounting db)
#   scripts/local-slurm.sh status   show what runs
set -euo pipefail

D=${SLURM_LOCAL_DIR:-/tmp/harness-slurm}
HOST=$(hostname -s)
CPUS=${SLURM_LOCAL_CPUS:-4}   # more than the 2 cores, so 4 small jobs run at once (config_overrides)

install_packages() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v mariadbd >/dev/null \
        && command -v slurmdbd >/dev/null; then
        return
    fi
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
    rm -f /usr/sbin/policy-rc.d
}

write_config() {
    mkdir -p "$D"/{state,spool,log,dev,mysql,run}
    local mem
    mem=$(free -m | awk '/^Mem:/ {printf "%d", $2 * 0.95}')
    cat > "$D/slurm.conf" <<CONF
ClusterName=localci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# memory sampled every second; a step over its --mem (DefMemPerCPU by default) is killed (sacct: FAILED,
# exit code 9:0 - the OUT_OF_MEMORY state needs cgroup memory enforcement, which this host lacks)
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MpiDefault=none
ReturnToService=2
MinJobAge=300
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
GresTypes=gpu
NodeName=$HOST CPUs=$CPUS RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    cat > "$D/gres.conf" <<CONF
AutoDetect=off
NodeName=$HOST Name=gpu File=$D/dev/gpu[0-1]
CONF
    for i in 0 1; do [ -e "$D/dev/gpu$i" ] || mknod -m 666 "$D/dev/gpu$i" c 1 3; done
    cat > "$D/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$D/log/slurmdbd.log
PidFile=$D/run/slurmdbd.pid
CONF
    chmod 600 "$D/slurmdbd.conf"
    mkdir -p /etc/slurm
    ln -sf "$D/slurm.conf" /etc/slurm/slurm.conf
    ln -sf "$D/gres.conf" /etc/slurm/gres.conf
    ln -sf "$D/slurmdbd.conf" /etc/slurm/slurmdbd.conf
}

# alive PIDFILE: its process exists and is not a zombie (PID 1 here may not reap what we stop)
alive() {
    local pid; pid=$(cat "$1" 2>/dev/null) || return 1  # a daemon removes its file as it exits
    kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# Daemons this script starts write their PID under $D/run; `down` stops those PIDs and nothing else
# (a munged or MariaDB that was already running on the machine is used, never stopped).
start_munge() {
    # a killed munged can linger as a zombie (PID 1 here does not reap), so test the service, not the process
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    [ -f /etc/munge/munge.key ] || mungekey -c -f 2>/dev/null || create-munge-key -f
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    rm -f "$D/run/munged.pid"
    local pidfile=/run/munge/harness-munged.pid
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$pidfile" 2>/dev/null \
        || /usr/sbin/munged --force --pid-file="$pidfile"
    if wait_for 10 test -s "$pidfile"; then cp "$pidfile" "$D/run/munged.pid"; fi
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! mysqladmin ping --silent 2>/dev/null; then
        rm -f "$D/run/mariadbd.pid"
        local pidfile=/run/mysqld/harness-mariadbd.pid  # a folder the mysql user may write
        (setsid mariadbd --user=mysql --pid-file="$pidfile" >"$D/log/mariadb.log" 2>&1 &)
        wait_for 30 mysqladmin ping --silent \
            || { echo "MariaDB did not come up: see $D/log/mariadb.log" >&2; exit 1; }
        cp "$pidfile" "$D/run/mariadbd.pid"
    fi
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm'; \
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

wait_for() {  # wait_for SECONDS COMMAND...
    local t=$1; shift
    for _ in $(seq $((t * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    return 1
}

stop_pid() {  # stop_pid PIDFILE: TERM, then wait up to 10 s for the process to go
    alive "$1" || return 0
    local pid; pid=$(cat "$1" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do alive "$1" || return 0; sleep 0.5; done
    echo "pid $pid ($1) did not stop in 10 s" >&2
}

up() {
    install_packages
    # on a fresh machine the files do not exist yet: cat fails, which pipefail would turn into exit 1
    local before; before=$({ cat "$D/slurm.conf" "$D/gres.conf" 2>/dev/null || true; } | md5sum)
    write_config
    if [ "$before" != "$(cat "$D/slurm.conf" "$D/gres.conf" | md5sum)" ] && alive "$D/run/slurmctld.pid"; then
        echo "slurm.conf changed: restarting slurmctld and slurmd" >&2
        stop_pid "$D/run/slurmd.pid"; stop_pid "$D/run/slurmctld.pid"
    fi
    start_munge
    start_mariadb
    alive "$D/run/slurmdbd.pid" || slurmdbd
    wait_for 30 sacctmgr -n show cluster || { echo "slurmdbd did not come up: $D/log/slurmdbd.log" >&2; exit 1; }
    alive "$D/run/slurmctld.pid" || slurmctld
    alive "$D/run/slurmd.pid" || slurmd
    wait_for 30 sh -c "sinfo -h -o %t | grep -qE 'idle|mix|alloc'" || {
        scontrol update nodename="$HOST" state=resume 2>/dev/null || true
        wait_for 15 sh -c "sinfo -h -o %t | grep -qE 'idle|mix|alloc'" || {
            echo "slurm node not ready: see $D/log/slurmctld.log and slurmd.log" >&2; sinfo >&2; exit 1; }
    }
    sinfo
}

down() {
    for d in slurmd slurmctld slurmdbd; do stop_pid "$D/run/$d.pid"; done
    if [ "${1:-}" = "--purge" ]; then
        mysql -e "DROP DATABASE IF EXISTS slurm_acct_db;" 2>/dev/null || true
        rm -rf "$D/state" "$D/spool"
    fi
    # only the MariaDB and munged this script started (by PID), never another user's
    stop_pid "$D/run/mariadbd.pid"; rm -f "$D/run/mariadbd.pid"
    stop_pid "$D/run/munged.pid"; rm -f "$D/run/munged.pid"
}

status() {
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        if alive "$D/run/$d.pid"; then echo "$d: running (pid $(cat "$D/run/$d.pid"))"; else echo "$d: not started by this script"; fi
    done
    sinfo 2>/dev/null || true
    squeue 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) shift; down "$@" ;;
    status) status ;;
    *) echo "usage: $0 up|down [--purge]|status" >&2; exit 2 ;;
esac
