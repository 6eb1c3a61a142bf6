#!/usr/bin/env bash
# Stop the single-node SLURM cluster that scripts/slurm-up.sh started (slurmd, slurmctld, munged).
#
# Usage: scripts/slurm-down.sh
#
# Only the daemons recorded in their pid files are stopped; packages and /etc/slurm/slurm.conf
# stay, so the next slurm-up.sh is fast. Jobs still queued are kept in the controller's state
# (/var/spool/slurmctld) and come back with it.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

stop() { # stop PIDFILE NAME: end the daemon recorded in PIDFILE, if it is one
    local pid
    [ -f "$1" ] || return 0
    pid="$(cat "$1" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
        echo "slurm-down: stopping $2 (pid $pid)" >&2
        $SUDO kill "$pid"
        for _ in $(seq 50); do
            [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 0
            sleep 0.2
        done
        echo "slurm-down: $2 (pid $pid) still running after 10 s" >&2
        return 1
    fi
}

stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/munge/munged.pid munged
