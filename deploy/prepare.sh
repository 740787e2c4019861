#!/usr/bin/env bash
# Everything the container test (tests/test_containers.py) needs, on a Debian/Ubuntu machine
# without Docker Hub: a Docker engine (deploy/engine.sh), a local base image
# (deploy/base-image.sh), the wheelhouse (deploy/wheelhouse.sh) and the image built offline
# from them (deploy/build.sh --offline), with the tracking service's image that
# tests/test_container_tracking.py runs (--tracking: no PyTorch, about a minute the first time).
# Idempotent: each step keeps what is already there, so a second run takes seconds. CI runs it
# before `make test` (.ci/run).
#
#   deploy/prepare.sh              # all four steps (installing the engine needs root)
#   deploy/prepare.sh --no-engine  # the engine is already there: base image, wheels, image
set -euo pipefail
cd "$(dirname "$0")/.."
engine=1
[[ ${1:-} == --no-engine ]] && engine=0
step() { local t0=$SECONDS; "$@"; echo "prepare.sh: $1 took $((SECONDS - t0)) s"; }
((engine)) && step deploy/engine.sh
if ! docker info >/dev/null 2>&1 && ! /usr/bin/docker info >/dev/null 2>&1; then
    echo "prepare.sh: no Docker engine answers: run sudo deploy/engine.sh, or start Docker" >&2
    exit 1
fi
# Debian's client, if it is there, for the steps below (a newer static client may lack buildx).
[[ -x /usr/bin/docker ]] && export DOCKER=/usr/bin/docker
step deploy/base-image.sh
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
export PYTHON
step deploy/wheelhouse.sh
step deploy/build.sh --offline --quiet --tracking
