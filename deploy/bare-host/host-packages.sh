#!/usr/bin/env bash
# The system tools a deployment without Docker uses besides Python (docs/deployment.md,
# "Without Docker"), and so tests/test_bare_deployment.py: nginx (the SuperLink host's proxy),
# nft (the rule that keeps uploaded apps on loopback) and ip (the test's network namespace).
# Installs only what is missing, from Debian/Ubuntu packages, as root; safe to rerun.
set -euo pipefail
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]} == 0)); then
    echo "host-packages.sh: nginx, nft and ip are installed"
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "host-packages.sh: missing ${missing[*]}: install them as root (Debian/Ubuntu: apt-get install -y ${missing[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
# Debian's package may start nginx with its default site on port 80; the proxy runs with a
# configuration of its own (nginx -c), so that one is stopped.
if [[ " ${missing[*]} " == *" nginx-light "* && -s /run/nginx.pid ]]; then
    nginx -s quit || true
fi
echo "host-packages.sh: installed ${missing[*]}"
