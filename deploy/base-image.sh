#!/usr/bin/env bash
# A glibc Python 3.11 base image made without any registry: Debian bookworm (python3 3.11)
# by debootstrap from a Debian mirror, imported into the local engine. For machines that
# cannot pull python:3.11-slim (no Docker Hub, air-gapped). Idempotent: an existing image
# is kept; the root file system is cached as a tarball so that a fresh engine re-imports
# it in seconds.
#
#   deploy/base-image.sh            # -> image fedmnist-base:bookworm (prints its name)
#   DEBIAN_MIRROR=http://my.mirror/debian deploy/base-image.sh
set -euo pipefail

IMAGE=${BASE_IMAGE_NAME:-fedmnist-base:bookworm}
CACHE=${FEDMNIST_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedmnist-deploy}
TARBALL=$CACHE/base-bookworm-rootfs.tar
DOCKER=${DOCKER:-docker}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE"
    exit 0
fi

if [[ ! -s $TARBALL ]]; then
    mirror=${DEBIAN_MIRROR:-}
    if [[ -z $mirror ]]; then  # the mirror apt already uses here
        mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | grep -oE 'https?://[^ ]+' | head -n 1 || true)
        mirror=${mirror:-http://deb.debian.org/debian}
    fi
    command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap is missing: apt-get install debootstrap (or run deploy/engine.sh)" >&2; exit 1; }
    [[ $(id -u) -eq 0 ]] || { echo "base-image.sh: debootstrap needs root: sudo $0" >&2; exit 1; }
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    echo "base-image.sh: debootstrap bookworm from $mirror (about a minute)" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,nginx-light bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    mkdir -p "$CACHE"
    tar -C "$rootfs" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
"$DOCKER" import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
