#!/usr/bin/env bash
# Build the fedavg-mnist image (Dockerfile) with BuildKit.
#
#   deploy/build.sh                 # CUDA PyTorch from PyPI (runs on CPUs too), base python:3.11-slim
#   deploy/build.sh --cpu           # CPU-only PyTorch from download.pytorch.org: a much smaller image
#   deploy/build.sh --offline       # no network: deploy/wheelhouse/ (deploy/wheelhouse.sh) and a local
#                                   # base image (default fedmnist-base:bookworm, deploy/base-image.sh)
#   deploy/build.sh --base IMAGE    # any glibc image with python3 3.11 and its venv module
#   deploy/build.sh --tag NAME:TAG  # default fedavg-mnist:0.1.0, the image docker-compose.yml runs
#   deploy/build.sh --quiet         # the build's log only if it fails
#   deploy/build.sh --tracking      # also the tracking service's image (fedavg-mnist-tracking:0.1.0:
#                                   # mlflow server, deploy/tracking/), for `--profile tracking`
#
# Then the SuperLink host's proxy image (fedavg-mnist-proxy:0.1.0, Debian's nginx) from the same
# base (debian:bookworm-slim when the app's base is python:3.11-slim), and with --tracking the
# tracking image from the app's base and the same wheels.
#
# Docker 23+ with the buildx plugin builds with BuildKit by default; an older client needs
# DOCKER_BUILDKIT=1, which this script sets. Extra arguments after -- go to `docker build`.
set -euo pipefail
cd "$(dirname "$0")/.."

torch=cuda offline=0 quiet=0 tracking=0 base="" tag=${FEDMNIST_IMAGE:-fedavg-mnist:0.1.0}
extra=()
while (($#)); do
    case $1 in
        --cpu) torch=cpu ;;
        --offline) offline=1 ;;
        --quiet) quiet=1 ;;
        --tracking) tracking=1 ;;
        --base) base=$2; shift ;;
        --tag) tag=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $base ]]; then
    if ((offline)); then base=fedmnist-base:bookworm; else base=python:3.11-slim; fi
fi

# A docker client that builds with BuildKit.
docker_cli=${DOCKER:-docker}
major() { "$1" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1; }
if "$docker_cli" buildx version >/dev/null 2>&1; then
    build=("$docker_cli" build)
elif [[ $(major "$docker_cli") =~ ^[0-9]+$ && $(major "$docker_cli") -lt 23 ]]; then
    export DOCKER_BUILDKIT=1
    build=("$docker_cli" build)
elif [[ -x /usr/bin/docker && $(major /usr/bin/docker) =~ ^[0-9]+$ && $(major /usr/bin/docker) -lt 23 ]]; then
    export DOCKER_BUILDKIT=1  # e.g. Debian's docker.io client next to a newer one without buildx
    build=(/usr/bin/docker build)
else
    echo "build.sh: this docker client has no BuildKit (buildx plugin): install docker-buildx-plugin" >&2
    exit 1
fi

if ((offline)); then
    if ! ls deploy/wheelhouse/*.whl >/dev/null 2>&1; then
        echo "build.sh: --offline needs the wheels in deploy/wheelhouse/: run deploy/wheelhouse.sh$([[ $torch == cpu ]] && echo ' --cpu') where a package index is reachable" >&2
        exit 1
    fi
    if ! "${build[0]}" image inspect "$base" >/dev/null 2>&1; then
        echo "build.sh: --offline needs the base image $base in the local engine: deploy/base-image.sh makes one (or docker load it)" >&2
        exit 1
    fi
fi

# Without Docker Hub, pulling the base fails with a bare DNS or TLS error: say what to do instead.
if ((!offline)) && ! "${build[0]}" image inspect "$base" >/dev/null 2>&1; then
    if ! pull=$(timeout 120 "${build[0]}" pull -q "$base" 2>&1); then
        echo "build.sh: cannot pull the base image $base (${pull##*$'\n'})" >&2
        echo "build.sh: no registry from here? Build without one: deploy/prepare.sh --no-engine" \
            "(a Debian base by debootstrap, the wheels by pip, then deploy/build.sh --offline)" >&2
        exit 1
    fi
fi

wheelhouse_image=scratch
if ((offline)); then
    # The wheels go to the engine once, as an image of their own named by their list: a 3 GB
    # build context sent again at every build would cost a minute each time.
    digest=$(cd deploy/wheelhouse && find . -maxdepth 1 -name '*.whl' -printf '%f %s\n' | LC_ALL=C sort | sha256sum | cut -c1-12)
    wheelhouse_image=fedmnist-wheelhouse:$digest
    if ! "${build[0]}" image inspect "$wheelhouse_image" >/dev/null 2>&1; then
        echo "build.sh: importing deploy/wheelhouse/ as $wheelhouse_image"
        tar -C deploy/wheelhouse -c --mtime=2000-01-01 --owner=0 --group=0 --sort=name --exclude=README.md . \
            | "${build[0]}" import - "$wheelhouse_image" >/dev/null
        for old in $("${build[0]}" image ls fedmnist-wheelhouse --format '{{.Repository}}:{{.Tag}}'); do
            [[ $old == "$wheelhouse_image" ]] || "${build[0]}" image rm "$old" >/dev/null || true
        done
    fi
fi

echo "build.sh: $tag from $base (torch: $torch, offline: $offline)"
args=(--tag "$tag" \
    --build-arg "BASE_IMAGE=$base" --build-arg "TORCH=$torch" --build-arg "OFFLINE=$offline" \
    --build-arg "WHEELHOUSE_IMAGE=$wheelhouse_image" \
    --label "fedavg-mnist.torch=$torch" \
    "${extra[@]}" .)
proxy_tag=${FEDMNIST_PROXY_IMAGE:-fedavg-mnist-proxy:0.1.0}
proxy_base=$base
[[ $base == python:3.11-slim ]] && proxy_base=debian:bookworm-slim
proxy_args=(--tag "$proxy_tag" --build-arg "BASE_IMAGE=$proxy_base" -f deploy/superlink-host/proxy.Dockerfile deploy/superlink-host)

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# build NAME ARGS...: the build's whole output, or with --quiet only its last lines if it fails.
build() {
    local name=$1
    shift
    if ((quiet)); then
        if ! "${build[@]}" --progress=plain "$@" >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "build.sh: the build of $name failed (its last 40 lines are above)" >&2
            exit 1
        fi
    else
        "${build[@]}" "$@"
    fi
    echo "build.sh: built $name ($("${build[0]}" image inspect "$name" --format '{{.Size}}' | awk '{printf "%.1f GB", $1/1e9}'))"
}
build "$tag" "${args[@]}"
echo "build.sh: $proxy_tag from $proxy_base"
build "$proxy_tag" "${proxy_args[@]}"
if ((tracking)); then
    tracking_tag=${FEDMNIST_TRACKING_IMAGE:-fedavg-mnist-tracking:0.1.0}
    echo "build.sh: $tracking_tag from $base"
    build "$tracking_tag" --tag "$tracking_tag" --build-arg "BASE_IMAGE=$base" --build-arg "OFFLINE=$offline" \
        --build-arg "WHEELHOUSE_IMAGE=$wheelhouse_image" deploy/tracking
fi
