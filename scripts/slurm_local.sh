#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the project's Slurm tests and for trying
# `refers sweep --executor slurm` / `refers pretrain --submit slurm` without a cluster.
#
#   scripts/slurm_local.sh start    install slurm-wlm and munge when missing (Debian, root), start
#                                   munged, slurmctld and slurmd; prints the SLURM_CONF to export
#   scripts/slurm_local.sh stop     stop them and remove the state folder
#   scripts/slurm_local.sh status   say whether it runs (exit 0) or not (exit 1)
#   scripts/slurm_local.sh env      print `export SLURM_CONF=...` for a running cluster
#
# State (configuration, munge key and socket, spool, logs) lives in $REFERS_SLURM_DIR (default
# /tmp/refers-slurm), never in /etc: the clients find the cluster through SLURM_CONF.
# One node named after this host, all its CPUs, one partition "debug"; process tracking by
# /proc (ProctrackType=proctrack/linuxproc) and no task plugin, so that no cgroups are needed;
# no accounting database (sacct is not configured, on purpose: the project must not need it).
set -euo pipefail

STATE="${REFERS_SLURM_DIR:-/tmp/refers-slurm}"
CONF="$STATE/slurm.conf"
HOST="$(hostname -s)"

say() { echo "slurm_local: $*" >&2; }

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "slurm-wlm and munge are not installed, and this is not a Debian machine run as root: install them first"
        return 1
    fi
    say "installing Debian's slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

running() {
    [ -f "$CONF" ] && SLURM_CONF="$CONF" timeout 10 sinfo -h -o %T 2>/dev/null | grep -Eq 'idle|mix|alloc'
}

write_config() {
    local cpus memory
    cpus="$(nproc)"
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat >"$CONF" <<EOF
ClusterName=refers-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=${REFERS_SLURMCTLD_PORT:-6817}
SlurmdPort=${REFERS_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=30
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if running; then
        say "already running ($CONF)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    install_if_missing
    stop_daemons
    mkdir -p "$STATE/ctld" "$STATE/spool"
    chmod 700 "$STATE"
    if [ ! -f "$STATE/munge.key" ]; then
        head -c 1024 /dev/urandom >"$STATE/munge.key"
        chmod 400 "$STATE/munge.key"
    fi
    munged --force --key-file="$STATE/munge.key" --socket="$STATE/munge.socket" \
        --pid-file="$STATE/munged.pid" --log-file="$STATE/munged.log" --seed-file="$STATE/munged.seed"
    write_config
    SLURM_CONF="$CONF" slurmctld -f "$CONF"
    SLURM_CONF="$CONF" slurmd -f "$CONF"
    for _ in $(seq 1 60); do
        if running; then
            say "running: one node ($HOST, $(nproc) CPUs), partition debug; state in $STATE"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 1
    done
    say "the cluster did not come up within 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log"
    tail -n 5 "$STATE"/slurm*.log >&2 || true
    return 1
}

stop_daemons() {
    local name pid
    for name in slurmd slurmctld munged; do
        if [ -f "$STATE/$name.pid" ]; then
            pid="$(cat "$STATE/$name.pid" 2>/dev/null || true)"
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$STATE/$name.pid"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop_daemons; rm -rf "$STATE"; say "stopped" ;;
    status) if running; then say "running ($CONF)"; else say "not running"; exit 1; fi ;;
    env) running && echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
