# Runs inside the image build (Dockerfile), in /bin/sh: installs into /opt/venv.
#   pip-install.sh deps WHEELHOUSE      the pinned dependencies (deploy/requirements.txt, for $TORCH)
#   pip-install.sh project WHEELHOUSE   this project itself, from the current folder (the build context)
# With OFFLINE=1 pip reads only WHEELHOUSE (the wheels of deploy/wheelhouse/, bind-mounted) and never
# touches the network.
set -eu
here=/opt/fedmnist-build
wheelhouse=${2:-/tmp/wheelhouse}
case "${TORCH:-cuda}" in
    cuda | cpu) ;;
    *) echo "build arg TORCH must be cuda or cpu, not '${TORCH}'" >&2; exit 2 ;;
esac
source_args=""
if [ "${OFFLINE:-0}" = 1 ]; then
    if ! ls "$wheelhouse"/*.whl >/dev/null 2>&1; then
        echo "OFFLINE=1 but deploy/wheelhouse/ (the wheelhouse image) holds no wheels: build with deploy/build.sh --offline, after deploy/wheelhouse.sh$([ "$TORCH" = cpu ] && echo ' --cpu')" >&2
        exit 1
    fi
    source_args="--no-index --find-links $wheelhouse"
elif [ "$TORCH" = cpu ]; then
    source_args="--extra-index-url https://download.pytorch.org/whl/cpu"
fi

case "$1" in
    deps)
        python3 "$here/requirements.py" "$TORCH" "$here/requirements.txt" >/tmp/requirements.txt
        echo "installing $(wc -l </tmp/requirements.txt) pinned packages (torch: $TORCH, offline: ${OFFLINE:-0})"
        # shellcheck disable=SC2086
        pip install --no-deps --no-warn-script-location $source_args -r /tmp/requirements.txt
        pip check
        rm /tmp/requirements.txt
        ;;
    project)
        # The build backend comes from the same source, pinned by deploy/requirements-build.txt.
        # shellcheck disable=SC2086
        PIP_CONSTRAINT="$here/requirements-build.txt" pip install --no-deps --no-warn-script-location $source_args .
        ;;
    *)
        echo "usage: pip-install.sh deps|project" >&2
        exit 2
        ;;
esac
