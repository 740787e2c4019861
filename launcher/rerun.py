"""Run a run folder again from its manifest and say whether the new history matches.

    python -m launcher.rerun RUN_DIR [--output-dir DIR] [--timeout S]

The manifest (``manifest.json``) holds the resolved run config and the number of
shards the nodes split MNIST into; the rerun uses the same values in a fresh
simulation (a new run folder next to the old one, or in --output-dir), then
compares the two histories metric by metric, round by round, and the final
weights byte for byte. Wall times are not compared. Exit status 0 when
everything matches, 1 when something differs (each difference is listed).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from launcher.simulate import DEFAULT_TIMEOUT_S, run_simulation
from run_folder import MODEL, RunFolder
from task.errors import run_cli

# Keys of a run config that say where a run goes or where it came from, not what it computes.
NOT_COMPARED = ("run-name", "output-dir", "resume-from")


def compare_histories(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """How many values were compared, and a line for each one that differs."""
    differences: list[str] = []
    if len(old) != len(new):
        differences.append(f"{len(old)} rounds before, {len(new)} now")
    compared = 0
    for before, now in zip(old, new):
        for group in ("server", "clients-train", "clients-evaluate"):
            a, b = before.get(group) or {}, now.get(group) or {}
            for key in sorted(set(a) | set(b)):
                compared += 1
                if not _same(a.get(key), b.get(key)):
                    differences.append(
                        f"round {before['round']} {group} {key}: {a.get(key)!r} before, {b.get(key)!r} now"
                    )
        old_drops = [(f["phase"], f["partition-id"], f["reason"]) for f in before.get("failures") or []]
        new_drops = [(f["phase"], f["partition-id"], f["reason"]) for f in now.get("failures") or []]
        compared += 1
        if old_drops != new_drops:
            differences.append(f"round {before['round']}: dropped replies {old_drops} before, {new_drops} now")
    return compared, differences


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def rerun(run_dir: Path, output_dir: Path | None, timeout: float) -> tuple[Path, list[str], int]:
    old = RunFolder.open(run_dir)
    manifest = old.manifest()
    config = {k: v for k, v in manifest["run-config"].items() if k not in NOT_COMPARED}
    config["run-name"] = f"{old.name}-rerun-{time.strftime('%Y%m%d-%H%M%S')}"
    new_dir = run_simulation(config, manifest["num-partitions"], output_dir or old.path.parent, timeout=timeout)
    new = RunFolder(new_dir)
    compared, differences = compare_histories(old.history()["rounds"], new.history()["rounds"])
    if new.manifest()["shards"] != manifest["shards"]:
        differences.append("the nodes' shards differ (another MNIST copy or another partitioning)")
    if old.file(MODEL).is_file() and new.file(MODEL).read_bytes() != old.file(MODEL).read_bytes():
        differences.append(f"{MODEL} differs")
    return new_dir, differences, compared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launcher.rerun", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="a run folder holding manifest.json")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="where the new run folder goes (default: beside the old)"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)

    def go() -> int:
        new_dir, differences, compared = rerun(args.run_dir, args.output_dir, args.timeout)
        versions_old = RunFolder.open(args.run_dir).manifest()["versions"]
        versions_new = RunFolder(new_dir).manifest()["versions"]
        changed = {k: (versions_old.get(k), v) for k, v in versions_new.items() if versions_old.get(k) != v}
        print(f"\nRerun: {new_dir}")
        if changed:
            print("Versions differ: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        if not differences:
            print(f"Match: all {compared} per-round values are identical and {MODEL} is byte-identical.")
            return 0
        print(f"Differs in {len(differences)} of {compared} values:")
        for line in differences[:50]:
            print(f"  {line}")
        return 1

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
