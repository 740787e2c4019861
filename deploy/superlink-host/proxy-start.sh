#!/bin/sh
# Start the proxy's nginx (deploy/superlink-host/nginx.conf) with its operators' listener open
# to this host's loopback only.
#
# The compose file publishes the operators' port on the host's 127.0.0.1, but Docker also lets
# any machine that routes to the container's own address through the host reach that port
# there (Docker adds an ACCEPT rule for every published port, whatever address it is published
# on). What tells the two apart is the source address nginx sees: a connection that comes in
# through the published loopback port reaches the container from its network's gateway (the
# host's end of the bridge: docker-proxy, or Docker's NAT when the userland proxy is off),
# while a routed packet keeps the sender's own address. So the operators' listener answers the
# gateway and nothing else (a routed packet cannot carry the gateway's address back: the host
# owns it). The gateway is read here, at every start, from the container's default route, and
# nginx.conf's geo block reads it from $conf.
set -eu

conf=/tmp/fedmnist-operators.conf

# /proc/net/route: "Iface Destination Gateway ..." in hex, bytes in reverse order.
hex=$(awk '$2 == "00000000" && $3 != "00000000" { print $3; exit }' /proc/net/route)
if [ -z "$hex" ]; then
    echo "proxy: no default route, so no gateway to let the operators in through: attach the proxy to" \
        "a network that is not internal (the compose file's 'edge')" >&2
    exit 1
fi
gateway=$(echo "$hex" | sed 's/\(..\)\(..\)\(..\)\(..\)/0x\4 0x\3 0x\2 0x\1/' | xargs printf '%d.%d.%d.%d')
printf '# written by proxy-start.sh: the gateway that loopback connections arrive from\n%s 1;\n' "$gateway" >"$conf"
echo "proxy: operators' listener open to $gateway (this host's loopback) only" >&2

exec nginx -g 'daemon off;' -c /etc/fedmnist/nginx.conf
