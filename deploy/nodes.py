"""N SuperNodes instead of docker-compose.yml's three: write a compose override file.

    .venv/bin/python deploy/nodes.py 10 > deploy/nodes.yml
    docker compose -f docker-compose.yml -f deploy/nodes.yml up -d

    # with TLS and authentication (keys: deploy/tls.sh --nodes 10), or GPUs:
    .venv/bin/python deploy/nodes.py 10 --tls --gpu > deploy/nodes.yml
    docker compose -f docker-compose.yml -f deploy/tls.yml -f deploy/gpu.yml -f deploy/nodes.yml up -d

Nodes supernode-0 .. supernode-(N-1) hold partitions 0 .. N-1 of N. Every node is a copy of
docker-compose.yml's supernode-0 (and, with --tls, of deploy/tls.yml's), so the override
follows those files; fewer than three nodes switch the extra default ones off with a
profile. The override goes last, after deploy/tls.yml and deploy/gpu.yml. The output is
JSON, which every YAML reader (both docker compose versions) reads as YAML. Needs PyYAML
(in the project's .venv).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "docker-compose.yml"
TLS = ROOT / "deploy" / "tls.yml"
GPU = ROOT / "deploy" / "gpu.yml"
TEMPLATE = "supernode-0"
NODE_CONFIG = re.compile(r"partition-id=\d+ num-partitions=\d+")
OFF_PROFILE = "not-in-this-federation"


def node_names(services: dict) -> list[str]:
    return sorted((n for n in services if re.fullmatch(r"supernode-\d+", n)), key=lambda n: int(n.split("-")[1]))


def for_node(text: str, i: int, n: int) -> str:
    """The template's text (a command, a volume) for node ``i`` of ``n``."""
    if not NODE_CONFIG.search(text) and TEMPLATE not in text:
        return text
    text = NODE_CONFIG.sub(f"partition-id={i} num-partitions={n}", text)
    return text.replace(f"{TEMPLATE}.key", f"supernode-{i}.key")


def override(n: int, tls: bool = False, gpu: bool = False) -> dict:
    if n < 1:
        raise ValueError(f"the number of SuperNodes must be at least 1, not {n}")
    base = yaml.safe_load(BASE.read_text())["services"]
    template = base[TEMPLATE]
    tls_template = yaml.safe_load(TLS.read_text())["services"][TEMPLATE] if tls else None
    gpu_template = yaml.safe_load(GPU.read_text())["services"][TEMPLATE] if gpu else None
    services: dict[str, dict] = {}
    for i in range(n):
        name = f"supernode-{i}"
        # A node the base file lacks needs the whole definition; the others only what changes.
        service = {} if name in base else copy.deepcopy(template)
        service["command"] = for_node((tls_template or template)["command"], i, n)
        if tls_template is not None:
            service["volumes"] = [for_node(v, i, n) for v in tls_template.get("volumes", [])]
        if gpu_template is not None:
            service.update(copy.deepcopy(gpu_template))
        services[name] = service
    for name in node_names(base)[n:]:
        services[name] = {"profiles": [OFF_PROFILE]}
    return {"services": services}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="number of SuperNodes (each holds 1/N of MNIST)")
    parser.add_argument(
        "--tls", action="store_true", help="nodes as in deploy/tls.yml (keys from deploy/tls.sh --nodes N)"
    )
    parser.add_argument("--gpu", action="store_true", help="one GPU per node, as in deploy/gpu.yml")
    args = parser.parse_args(argv)
    try:
        data = override(args.n, args.tls, args.gpu)
    except ValueError as exc:
        print(f"nodes.py: {exc}", file=sys.stderr)
        return 2
    flags = "".join(f" --{f}" for f in ("tls", "gpu") if getattr(args, f))
    print(f"# Written by: deploy/nodes.py {args.n}{flags}. {args.n} SuperNodes; use it as the last -f file.")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
