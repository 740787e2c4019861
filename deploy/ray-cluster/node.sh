#!/usr/bin/env bash
# Start this machine's Ray for the simulation on several machines (docs/speed.md, "Past one machine").
#
#   deploy/ray-cluster/node.sh head [--num-cpus N]                  # the machine that runs the launcher
#   deploy/ray-cluster/node.sh worker HEAD_IP:6379 [--num-cpus N]   # every other machine
#   ray stop                                                        # on each machine, when done
#
# Ray's own ports are fixed here, so a firewall can open exactly these, TCP, between the machines:
#   head only:     6379 (the cluster's address: workers and the launcher connect to it)
#   every machine: 6380-6385 (node manager, object manager, runtime-env agent, dashboard agent,
#                  metrics) and 10002-10199 (Ray's worker processes: the clients and the driver)
# The dashboard (8265) is not started. Passed on to `ray start`: --num-cpus (the CPUs Ray offers
# the clients here; default all), --num-gpus, --object-store-memory (bytes), --resources (JSON).
set -euo pipefail
usage="usage: $0 head|worker [HEAD_IP:6379] [--num-cpus N] [--num-gpus N] [--object-store-memory BYTES]"
role=${1:-}
shift || true
args=(--node-manager-port=6380 --object-manager-port=6381 --runtime-env-agent-port=6382
    --dashboard-agent-grpc-port=6383 --dashboard-agent-listen-port=6384 --metrics-export-port=6385
    --min-worker-port=10002 --max-worker-port=10199 --disable-usage-stats)
case $role in
head) args=(--head --port=6379 --include-dashboard=false "${args[@]}") ;;
worker)
    [[ ${1:-} == *:* ]] || { echo "$usage (the head's address is missing)" >&2; exit 2; }
    args=(--address="$1" "${args[@]}")
    shift
    ;;
*) echo "$usage" >&2; exit 2 ;;
esac
while (($#)); do
    case $1 in
    --num-cpus | --num-gpus | --object-store-memory | --resources)
        [[ $# -ge 2 ]] || { echo "$0: $1 needs a value" >&2; exit 2; }
        args+=("$1" "$2")
        shift 2
        ;;
    *) echo "$0: unknown option $1; $usage" >&2; exit 2 ;;
    esac
done
exec ray start "${args[@]}"
