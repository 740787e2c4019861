"""How fast the project runs and how far it scales, measured on this machine.

    .venv/bin/python -m benchmarks.perf                       # every row (about half an hour on 2 cores)
    .venv/bin/python -m benchmarks.perf --only overhead,coldstart
    .venv/bin/python -m benchmarks.perf --only scale --scale 10,100,1000

Prints one table and appends it to ``benchmarks/RESULTS-perf.md`` (a section per
run: date, command, machine, versions) and every row, with all of those, to
``benchmarks/perf-results.jsonl``. Every row records the 1-minute load average
before and after it: on a shared machine a row measured under load is slow for
reasons of its own, so compare rows measured side by side in one run.

Rows (the same work in each: the MLP, 600 images per client, every client every
round, 1 local epoch, batch 32, SGD 0.01 with momentum 0.9, no client evaluation):

- overhead: the same FedAvg rounds (a) as a plain in-process PyTorch loop, no
  Flower, no Ray (one process, one thread; ``--plain-threads 1,2`` adds more), and (b) through ``flwr run`` simulation
  with this project's apps (``launcher.simulate``); steady-state seconds per round
  (median of rounds 2..R, round 1 holds the start-up) and the ratio. MLP and autoencoder.
- coldstart: from the launcher command to the end of round 1 with 100 clients, and
  when each phase ended (the launcher's ``[timing]`` lines and the run's log lines).
- scale: 10 to 10,000 virtual clients sharing MNIST (so 6,000 to 6 images each),
  10% of them per round (the same 6,000 training images per round): seconds per
  round and the peak of the resident set (and of PSS, shared pages counted once)
  summed over every process the benchmark started, sampled every 0.2 s.
- deployment: 3 SuperNodes on loopback (``flower-supernode``, one ClientApp process
  per message) against the simulation with 3 clients, the same work.
- nodes: one SuperLink with TLS and node authentication behind the proxy (nginx, as on a bare
  host) under ``--nodes`` real SuperNodes, each in a network namespace of its own: what one
  connected node costs the SuperLink and the proxy (memory, CPU), and a round with 10% and one
  with all of them training (tiny shards; benchmarks/nodes.py). Needs root, ip and nginx.
- gpu: local training throughput on CUDA against the CPU for both models, and a
  simulation with the clients sharing the GPU; "not measured" with the reason where
  this machine has none.
"""

# The sections are in benchmarks/perf_rows.py, the runs they measure in benchmarks/perf_runs.py,
# the process sampler in benchmarks/sampling.py, the table and the files in benchmarks/perf_results.py.

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.nodes import nodes
from benchmarks.perf_results import RESULTS_JSONL, RESULTS_MD, Row, table, targets, write
from benchmarks.perf_rows import coldstart, deployment, gpu, overhead, scale

SECTIONS = ("overhead", "coldstart", "scale", "deployment", "gpu", "nodes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the overhead and deployment rows (default 4)")
    parser.add_argument(
        "--plain-threads",
        default="1",
        help="PyTorch threads of the plain loop, e.g. 1,2 for both (default 1: one process, one thread)",
    )
    parser.add_argument("--scale", default="10,100,1000,10000", help="client counts of the scale rows")
    parser.add_argument("--nodes", type=int, default=30, help="SuperNodes of the nodes rows (default 30)")
    parser.add_argument("--models", default="mlp,autoencoder", help="models of the overhead rows")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help="Markdown file the table is appended to")
    parser.add_argument("--jsonl", type=Path, default=RESULTS_JSONL, help="file every row is appended to as JSON")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    command = "python -m benchmarks.perf " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fedmnist-perf-") as tmp:
        work = Path(tmp)
        for section in sections:
            print(f"[perf] {section} ...", file=sys.stderr, flush=True)
            if section == "overhead":
                rows += overhead(
                    args.rounds,
                    work,
                    plain_threads=tuple(int(t) for t in args.plain_threads.split(",")),
                    models=tuple(m.strip() for m in args.models.split(",")),
                )
            elif section == "coldstart":
                rows += coldstart(work)
            elif section == "scale":
                rows += scale([int(x) for x in args.scale.split(",")], work)
            elif section == "deployment":
                rows += deployment(args.rounds, work)
            elif section == "gpu":
                rows += gpu(args.rounds, work)
            elif section == "nodes":
                rows += nodes(args.nodes, work)
            print(table(rows[-3:]), file=sys.stderr, flush=True)
    print(table(rows))
    print(targets(rows))
    if not args.no_write:
        write(rows, command.strip(), started, args.results, args.jsonl)
        print(f"Appended to {args.results} and {args.jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
