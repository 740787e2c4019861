#!/usr/bin/env bash
# Fill deploy/wheelhouse/ with every wheel the images install (deploy/requirements*.txt, and
# deploy/tracking/requirements.txt for the tracking service's image), for
# Linux x86_64 and CPython 3.11, so that the image builds with no network at all
# (`deploy/build.sh --offline`). Run it on any machine that reaches a package index, then
# carry the folder to the build machine (it is not in git). Idempotent: wheels already
# there are kept, and pip only fetches what is missing.
#
#   deploy/wheelhouse.sh          # CUDA build of PyTorch (PyPI's; about 3 GB of wheels)
#   deploy/wheelhouse.sh --cpu    # CPU-only PyTorch from download.pytorch.org (about 0.3 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3)}
DEST=deploy/wheelhouse
variant=cuda
case "${1:-}" in
    "") ;;
    --cpu) variant=cpu ;;
    *) echo "usage: $0 [--cpu]" >&2; exit 2 ;;
esac

# The image's platform, whatever this machine is (pip picks wheels for it, never sdists).
target=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311)
# glibc 2.36 (Debian bookworm, what python:3.11-slim and deploy/base-image.sh are made of) and older.
for minor in $(seq 36 -1 5); do target+=(--platform "manylinux_2_${minor}_x86_64"); done
target+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

mkdir -p "$DEST"
if "$PYTHON" deploy/requirements.py missing "$variant" "$DEST" deploy/requirements.txt deploy/requirements-build.txt \
    deploy/tracking/requirements.txt >/dev/null; then
    echo "$DEST: every pinned wheel is there ($variant)"
    exit 0
fi
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
extra=()
if [[ $variant == cpu ]]; then
    # The same pins without the CUDA libraries; torch and torchvision from PyTorch's CPU index.
    "$PYTHON" deploy/requirements.py cpu deploy/requirements.txt >"$requirements"
    extra=(--extra-index-url https://download.pytorch.org/whl/cpu)
else
    cp deploy/requirements.txt "$requirements"
fi
quiet() { grep -v "is ignored: it is neither" >&2 || true; }
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps "${target[@]}" "${extra[@]}" \
    -r "$requirements" -d "$DEST" 2> >(quiet)
# The build backend goes in its own call: its pins may differ from the runtime's.
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps "${target[@]}" \
    -r deploy/requirements-build.txt -d "$DEST" 2> >(quiet)
# So does the tracking image's (no PyTorch in it: the same list for both variants).
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps "${target[@]}" \
    -r deploy/tracking/requirements.txt -d "$DEST" 2> >(quiet)
echo "$DEST: $(find "$DEST" -name '*.whl' | wc -l) wheels, $(du -sh "$DEST" | cut -f1) ($variant)"
