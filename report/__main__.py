"""``python -m report RUN_DIR``: write report.md (federated vs central) into a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report.build import make_report
from task.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m report",
        description="Compare a finished federated run with the same model trained centrally; "
        "writes report.md and its figures into the run folder.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder (holding config.json, history.json, model.pt)")
    parser.add_argument(
        "--central-epochs",
        type=int,
        default=None,
        help="epochs of the central baseline (default: the run's central-epochs)",
    )
    parser.add_argument("--nodes", type=int, default=10, help="nodes sampled for local vs merged (default 10)")
    parser.add_argument(
        "--local-epochs",
        type=int,
        default=None,
        help="epochs of each node's local model (default: the run's local-epochs)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=None, help="default: the run's device knob"
    )
    args = parser.parse_args(argv)

    def report() -> None:
        path = make_report(
            args.run_dir,
            central_epochs=args.central_epochs,
            nodes=args.nodes,
            local_epochs=args.local_epochs,
            device=args.device,
        )
        print(f"Report: {path}")

    return run_cli(report)


if __name__ == "__main__":
    sys.exit(main())
