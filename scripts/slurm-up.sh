#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for trying `launcher=slurm` locally and for CI.
#
# Usage: scripts/slurm-up.sh        (as root, or as a user with sudo; Debian/Ubuntu)
#
# Idempotent: installs Debian's slurmctld, slurmd, slurm-client and munge if missing, writes
# /etc/slurm/slurm.conf for this host (CPUs = nproc, RealMemory = total memory minus headroom),
# starts munged, slurmctld and slurmd unless they already run with this configuration, and waits
# until `sinfo` shows the node idle. Stop everything with scripts/slurm-down.sh.
# Environment: SLURM_UP_TIMEOUT_S (default 90) bounds the wait for the node.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
TIMEOUT_S="${SLURM_UP_TIMEOUT_S:-90}"

log() { echo "slurm-up: $*" >&2; }

# --- packages -------------------------------------------------------------------------------
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}" >/dev/null; then
        $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
        $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}" >/dev/null
    fi
fi

# --- configuration --------------------------------------------------------------------------
host="$(hostname -s)"
cpus="$(nproc)"
total_mb="$(free -m | awk '/^Mem:/ {print $2}')"
headroom_mb=$((total_mb / 8 > 1024 ? total_mb / 8 : 1024))
mem_mb=$((total_mb - headroom_mb))
# Without a default, a job that asks for no memory gets the whole node and runs alone.
def_mem_per_cpu=$((mem_mb / cpus))

new_conf="$(
    cat <<EOF
# Single-node cluster written by scripts/slurm-up.sh (do not edit: it rewrites this file).
ClusterName=local
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
DefMemPerCPU=${def_mem_per_cpu}
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
)"

$SUDO mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
conf_changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    log "writing $CONF (NodeName=$host CPUs=$cpus RealMemory=$mem_mb)"
    printf '%s\n' "$new_conf" | $SUDO tee "$CONF" >/dev/null
    conf_changed=1
fi

# --- daemons --------------------------------------------------------------------------------
alive() { # alive PIDFILE NAME: the pid in PIDFILE runs a process called NAME
    local pid
    [ -f "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

stop() { # stop PIDFILE NAME: end the daemon recorded in PIDFILE, if it is one
    if alive "$1" "$2"; then
        $SUDO kill "$(cat "$1")"
        for _ in $(seq 50); do alive "$1" "$2" || break; sleep 0.2; done
    fi
}

if [ ! -f /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    $SUDO mungekey --create --keyfile=/etc/munge/munge.key
    $SUDO chmod 400 /etc/munge/munge.key
fi
if ! alive /run/munge/munged.pid munged; then
    log "starting munged"
    if id munge >/dev/null 2>&1; then # Debian's layout: munged runs as its own user
        $SUDO install -d -o munge -g munge -m 0755 /run/munge
        $SUDO chown -R munge:munge /var/log/munge /var/lib/munge
        if [ -z "$SUDO" ]; then
            runuser -u munge -- munged --pid-file=/run/munge/munged.pid
        else
            sudo -u munge munged --pid-file=/run/munge/munged.pid
        fi
    else
        $SUDO munged --force --pid-file=/run/munge/munged.pid
    fi
fi

if [ "$conf_changed" -eq 1 ]; then
    stop /run/slurmd.pid slurmd
    stop /run/slurmctld.pid slurmctld
fi
if ! alive /run/slurmctld.pid slurmctld; then
    log "starting slurmctld"
    $SUDO slurmctld -i
fi
if ! alive /run/slurmd.pid slurmd; then
    log "starting slurmd"
    $SUDO slurmd
fi

# --- wait for the node ----------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT_S))
resumed=0
while :; do
    state="$(sinfo -h -n "$host" -o '%t' 2>/dev/null | head -n1 || true)"
    case "$state" in
    idle | mix | alloc | comp) break ;;
    down* | drain* | drng*)
        if [ "$resumed" -eq 0 ]; then
            log "node is $state, resuming it"
            $SUDO scontrol update NodeName="$host" State=RESUME || true
            resumed=1
        fi
        ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "node $host not ready after ${TIMEOUT_S}s (state: '${state:-no answer}')."
        log "see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log"
        exit 1
    fi
    sleep 1
done
log "ready: $(sinfo -h -o '%P %D %t %C' | head -n1) (partition nodes state cpus A/I/O/T)"
