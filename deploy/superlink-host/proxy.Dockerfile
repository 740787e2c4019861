# The SuperLink host's reverse proxy: Debian's nginx, nothing else (deploy/superlink-host/nginx.conf
# is mounted by the compose file, so a change to it needs no rebuild).
#
#   docker build -f deploy/superlink-host/proxy.Dockerfile -t fedavg-mnist-proxy:0.1.0 deploy/superlink-host
#   (deploy/build.sh builds it next to the app image; --offline bases it on fedmnist-base:bookworm)
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# deploy/base-image.sh's base already has nginx (no registry needed); any other takes it from apt.
RUN (command -v nginx >/dev/null || (apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null)) \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
# (its mode in git, 755, comes with it)
COPY proxy-start.sh /usr/local/bin/fedmnist-proxy-start
# SIGQUIT: nginx finishes the requests in progress (worker_shutdown_timeout caps the wait).
STOPSIGNAL SIGQUIT
# Writes the operators' listener's allow list, then execs nginx -g 'daemon off;' (PID 1).
ENTRYPOINT ["fedmnist-proxy-start"]
