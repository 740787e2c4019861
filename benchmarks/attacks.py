"""Attacks against defenses: the final accuracy of the MLP when some of each round's nodes attack.

    FEDMNIST_ALLOW_FAULTS=1 .venv/bin/python -m benchmarks.attacks [--partitioning iid|shards]
        [--rounds N] [--attack NAME ...] [--defense NAME ...] [--share 0.1 0.3] [--jsonl FILE]

100 nodes, 10% of them training each round (C=0.1, E=1, B=10, learning rate 0.1: McMahan et
al.'s 2NN setting), the project's ServerApp rounds and ClientApp in one process
(:mod:`benchmarks.loopback`). In every round the first ``share`` of the nodes the server samples
attack (rounded up: 1 of 10 at 10%, 3 of 10 at 30%), so the share is exact in every round, not
only on average (a round retried because too few replies passed the checks asks other nodes,
which do not attack); each defense is told that share where it takes one (Krum's, Bulyan's
``num-malicious-nodes``, the trimmed mean's ``trim-beta``), except ``robust``, which is
``presets/robust.toml`` as it is. Prints one Markdown row per cell.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import tomllib
from pathlib import Path

from benchmarks.loopback import run_rounds
from server_app.rounds import RoundFailed
from server_app.sampling import sample_partitions
from server_app.strategy import min_replies
from task.config import Settings

NUM_NODES = 100
BASE = {
    "fraction-train": 0.1,
    "fraction-evaluate": 0.0,
    "local-epochs": 1,
    "batch-size": 10,
    "learning-rate": 0.1,
    "device": "cpu",
}
# Each attack as a fault-injection item (task/faults.py) without its partitions and round.
ATTACKS = {
    "none": None,
    "signflip": "signflip",
    "scale": "scale=20",
    "noise": "noise=1",
    "labelflip": "labelflip",
    "count": "count=1000000000",
    "collude": "collude=2",
}


def defense_knobs(name: str, attackers: int, share: float) -> dict:
    """The knobs of a defense, told how many of a round's nodes may attack."""
    f = max(attackers, 1)
    return {
        "fedavg": {},
        "screen": {"update-screen": 3.0},
        "fedmedian": {"strategy": "fedmedian"},
        "trimmed": {"strategy": "fedtrimmedavg", "trim-beta": min(share + 0.1, 0.45)},
        "krum": {"strategy": "krum", "num-malicious-nodes": f},
        "multikrum": {"strategy": "multikrum", "num-malicious-nodes": f},
        "bulyan": {"strategy": "bulyan", "num-malicious-nodes": f},
        "robust": ROBUST,  # the preset: the same whatever the share
    }[name]


DEFENSES = ("fedavg", "screen", "fedmedian", "trimmed", "krum", "multikrum", "bulyan", "robust")
ROBUST = tomllib.loads((Path(__file__).parent.parent / "presets" / "robust.toml").read_text(encoding="utf-8"))


def attack_items(kind: str | None, attackers: int, settings: Settings) -> str:
    """The fault-injection text that makes the first ``attackers`` of every round's sampled nodes
    attack. The server's sampling is seeded (run seed, round, attempt), so every round's sample
    is known in advance."""
    if not kind or not attackers:
        return ""
    items = []
    for rnd in range(1, settings.num_server_rounds + 1):
        chosen = sample_partitions(
            list(range(NUM_NODES)), settings.fraction_train, min_replies(settings), settings.seed, rnd, 0, "train"
        )
        items.append(f"{kind}@{','.join(map(str, chosen[:attackers]))}:{rnd}")
    return " ".join(items)


def cell(partitioning: str, rounds: int, attack: str, share: float, defense: str) -> dict:
    """One cell; with no attack the defense is set up as for a 10% share (what it costs then)."""
    per_round = int(NUM_NODES * BASE["fraction-train"])
    attackers = math.ceil(per_round * share) if ATTACKS[attack] else 0
    told = attackers or math.ceil(per_round * 0.1)
    knobs = {**BASE, "partitioning": partitioning, "num-server-rounds": rounds}
    knobs.update(defense_knobs(defense, told, share if attackers else 0.1))
    settings = Settings.from_run_config(knobs)
    row = {"partitioning": partitioning, "rounds": rounds, "attack": attack, "share": share if attackers else 0.0}
    row.update({"attackers-per-round": attackers, "defense": defense})
    if min_replies(settings) > per_round:  # e.g. Bulyan with 3 of 10 malicious: it needs 4 x 3 + 3 replies
        return {**row, "final": None, "why-not": f"needs {min_replies(settings)} replies a round, {per_round} sampled"}
    faults = attack_items(ATTACKS[attack], attackers, settings)
    started = time.monotonic()
    try:
        result = run_rounds({**knobs, "fault-injection": faults}, NUM_NODES)
    except RoundFailed as exc:  # the run stops, as a real one would
        return {**row, "final": None, "why-not": f"the run stopped: {str(exc).split(', after')[0]}"}
    return {
        **row,
        "final": result["by-round"][-1],
        "by-round": result["by-round"],
        "dropped": len(result["failures"]),
        "seconds-per-round": sum(result["seconds-per-round"]) / rounds,
        "wall-s": time.monotonic() - started,
    }


def markdown(row: dict) -> str:
    if row["final"] is None:
        result = f"n/a ({row['why-not']}) | | "
    else:
        result = f"{100 * row['final']:.2f}% | {row['dropped']} | {row['seconds-per-round']:.2f}"
    return f"| {row['partitioning']} | {row['attack']} | {row['attackers-per-round']} | {row['defense']} | {result} |"


def pivot(rows: list[dict]) -> str:
    """The cells as one Markdown table: a row per attack and share, a column per defense,
    the final accuracy in each cell (n/a where the defense cannot take that share)."""
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    keys = list(dict.fromkeys((r["partitioning"], r["attack"], r["attackers-per-round"]) for r in rows))
    found = {(r["partitioning"], r["attack"], r["attackers-per-round"], r["defense"]): r for r in rows}
    lines = [
        "| partitioning | attack | attackers of 10 | " + " | ".join(defenses) + " |",
        "|---|---|---|" + "---|" * len(defenses),
    ]
    for key in keys:
        cells = []
        for defense in defenses:
            row = found.get((*key, defense))
            cells.append("" if row is None else "n/a" if row["final"] is None else f"{100 * row['final']:.2f}%")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(rows: list[dict], path: str) -> None:
    """The same table as a picture: one panel per partitioning, the final accuracy in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(r["partitioning"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    found = {(r["partitioning"], r["attack"], r["attackers-per-round"], r["defense"]): r["final"] for r in rows}
    heights = [len({(r["attack"], r["attackers-per-round"]) for r in rows if r["partitioning"] == p}) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 0.45 * sum(heights) + 1.6), height_ratios=heights)
    for ax, panel in zip([axes] if len(panels) == 1 else axes, panels):
        keys = list(dict.fromkeys((r["attack"], r["attackers-per-round"]) for r in rows if r["partitioning"] == panel))
        grid = [[found.get((panel, *key, d)) for d in defenses] for key in keys]
        values = [[float("nan") if v is None else 100 * v for v in line] for line in grid]
        ax.imshow(values, cmap="RdYlGn", vmin=50, vmax=100, aspect="auto")
        for i, line in enumerate(values):
            for j, v in enumerate(line):
                ax.text(j, i, "n/a" if v != v else f"{v:.1f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(defenses)), defenses, fontsize=8)
        ax.set_yticks(range(len(keys)), [f"{a} ({n} of 10)" if n else a for a, n in keys], fontsize=8)
        ax.set_title(f"{panel}: final test accuracy (%) after 20 rounds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    if argv[:1] in (["--pivot"], ["--plot"]):  # --pivot FILE.jsonl ... | --plot OUT.png FILE.jsonl ...
        paths = argv[1:] if argv[0] == "--pivot" else argv[2:]
        rows = [json.loads(line) for path in paths for line in open(path, encoding="utf-8") if line.strip()]
        print(pivot(rows)) if argv[0] == "--pivot" else heatmap(rows, argv[1])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attacks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitioning", default="iid", choices=["iid", "shards"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--attack", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--defense", nargs="+", default=list(DEFENSES), choices=list(DEFENSES))
    parser.add_argument("--share", nargs="+", type=float, default=[0.1, 0.3])
    parser.add_argument("--jsonl", help="also append every cell as a JSON line to this file")
    parser.add_argument("--verbose", action="store_true", help="show the rounds' log lines (every dropped reply)")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.INFO if args.verbose else logging.ERROR)
    print("| partitioning | attack | attackers per round | defense | final accuracy | dropped | s/round |")
    print("|---|---|---|---|---|---|---|")
    for attack in args.attack:
        for share in [0.0] if attack == "none" else args.share:
            for defense in args.defense:
                row = cell(args.partitioning, args.rounds, attack, share, defense)
                print(markdown(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as out:
                        out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
