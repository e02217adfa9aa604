#!/usr/bin/env bash
# Start or stop the Docker daemon for `make image` / `make compose-test` (as root).
#   deploy/docker/dockerd.sh start   start dockerd unless one answers; prints "started" or "running"
#   deploy/docker/dockerd.sh stop    stop the dockerd this script started (and only that one)
# The daemon gets no bridge and no iptables rules: the images are built with the host's
# network (the build only reaches the package mirrors) and the test federation runs with
# host networking on loopback ports, so no container needs a bridge. Storage: overlay2,
# or vfs where the kernel or the file system cannot do overlay (slow; said on stderr).
set -euo pipefail
DOCKER=${DOCKER:-docker}
STATE=${DOCKERD_STATE:-/run/fedcredit-dockerd}
PIDFILE=$STATE/dockerd.pid
LOG=${DOCKERD_LOG:-/var/log/fedcredit-dockerd.log}

answers() { $DOCKER info >/dev/null 2>&1; }

driver() {
    if grep -qw overlay /proc/filesystems 2>/dev/null || modprobe overlay 2>/dev/null; then
        local fs
        fs=$(stat -f -c %T /var/lib 2>/dev/null || echo unknown)
        case "$fs" in overlayfs|overlay|tmpfs|fuseblk|aufs) ;; *) echo overlay2; return ;; esac
    fi
    echo "dockerd.sh: overlay is not possible here; using the vfs storage driver (slow, large)" >&2
    echo vfs
}

start() {
    if answers; then echo running; return 0; fi
    command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd is not installed (apt-get install docker.io)" >&2; exit 2; }
    [ "$(id -u)" -eq 0 ] || { echo "dockerd.sh: the daemon starts as root" >&2; exit 2; }
    mkdir -p "$STATE"
    local drv; drv=$(driver)
    # containerd is started by dockerd itself when none runs.
    setsid dockerd --storage-driver "$drv" --bridge=none --iptables=false --ip6tables=false \
        --pidfile "$STATE/docker.pid" >>"$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    for _ in $(seq 1 120); do
        if answers; then echo started; return 0; fi
        kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
        sleep 0.5
    done
    echo "dockerd.sh: dockerd did not answer within 60 s; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
}

stop() {
    [ -f "$PIDFILE" ] || { echo "dockerd.sh: no daemon started by this script" >&2; return 0; }
    local pid; pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$PIDFILE"
    echo stopped
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
