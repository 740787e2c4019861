#!/usr/bin/env bash
# Make a Docker engine answer on this machine: install it if missing, start the daemon
# if it is not running, wait until it answers. Idempotent: safe to run again and again.
#
#   deploy/engine.sh               # as root (sudo deploy/engine.sh where sudo is installed);
#                                  # Debian/Ubuntu without systemd (CI containers, build boxes)
#
# Debian ships compose only as docker-compose 1.29 (v1). So that `docker compose ...` (the v2
# spelling every page of docs/ uses) works too, a docker CLI plugin that hands its arguments to
# docker-compose is installed when no compose plugin is there.
#
# On a desktop or server with systemd, install Docker the usual way instead
# (https://docs.docker.com/engine/install/) and skip this script.
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
# The distribution's client first: `docker build` with DOCKER_BUILDKIT=1 works there without buildx.
CLI=$(command -v /usr/bin/docker || command -v docker || echo /usr/bin/docker)

answers() { "$CLI" info >/dev/null 2>&1; }

have_compose() { command -v docker-compose >/dev/null || "$CLI" compose version >/dev/null 2>&1; }

missing=()
answers || [[ -x /usr/sbin/dockerd && -x $CLI ]] || missing+=(docker.io)
have_compose || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)  # for deploy/base-image.sh
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "engine.sh: missing ${missing[*]}, and installing needs root: run $0 as root (e.g. sudo $0)" >&2
        exit 1
    fi
    echo "engine.sh: installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! answers; then
    [[ $(id -u) -eq 0 ]] || { echo "engine.sh: no Docker engine answers, and starting one needs root: run $0 as root (e.g. sudo $0)" >&2; exit 1; }
    if pgrep -x dockerd >/dev/null; then
        echo "engine.sh: dockerd is running but does not answer yet; waiting"
    else
        echo "engine.sh: starting dockerd (log: $LOG)"
        # Its own session, so that it outlives this script and the shell that ran it.
        setsid /usr/sbin/dockerd >>"$LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 60); do
        answers && break
        sleep 1
    done
fi
if ! answers; then
    echo "engine.sh: dockerd did not answer within 60 s; see $LOG:" >&2
    tail -n 20 "$LOG" >&2 || true
    exit 1
fi
# `docker compose` for every docker client on this machine: a plugin that runs docker-compose v1.
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
if command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    mkdir -p "$(dirname "$PLUGIN")"
    cat >"$PLUGIN" <<'PLUGIN_EOF'
#!/bin/sh
# `docker compose` -> docker-compose (v1), installed by deploy/engine.sh.
if [ "$1" = docker-cli-plugin-metadata ]; then
    echo '{"SchemaVersion":"0.1.0","Vendor":"fedavg-mnist","Version":"v1","ShortDescription":"docker-compose v1"}'
    exit 0
fi
shift  # the docker client passes the plugin's own name first
exec docker-compose "$@"
PLUGIN_EOF
    chmod 755 "$PLUGIN"
    echo "engine.sh: 'docker compose' now runs docker-compose $(docker-compose version --short 2>/dev/null)"
fi
echo "engine.sh: the Docker engine answers ($("$CLI" version --format '{{.Server.Version}}'))"
