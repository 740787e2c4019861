"""Run one federated simulation on Flower's real runtime (SuperLink + Ray), isolated.

    python -m launcher.simulate --num-supernodes 100 --output-dir outputs \\
        --run-config presets/tutorial.toml --run-config "num-server-rounds=3"

Starts its own ``flower-superlink --simulation`` on free ports with a temporary
Flower home (so no other SuperLink on the machine is used or left behind), runs
``flwr run . --stream``, waits for ``finished:completed``, stops the SuperLink
and prints the run folder.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

from launcher.flower import PROJECT_ROOT, FlowerError, flower_home, flwr_run, start_superlink
from task.config import ConfigError, Settings

CONNECTION = "local-simulation"


def parse_run_config(items: list[str]) -> dict[str, object]:
    """Merge ``--run-config`` items in order: TOML files (presets) and ``k=v`` strings."""
    merged: dict[str, object] = {}
    for item in items:
        path = Path(item)
        if item.endswith(".toml"):
            if not path.is_file():
                raise SystemExit(f"error: --run-config file {item} does not exist (presets are in presets/).")
            with path.open("rb") as fh:
                merged.update(tomllib.load(fh))
            continue
        try:
            merged.update(tomllib.loads("\n".join(_split_pairs(item))))
        except tomllib.TOMLDecodeError as exc:
            raise SystemExit(f"error: --run-config '{item}' is not 'key=value ...' in TOML syntax ({exc}).")
    return merged


def _split_pairs(text: str) -> list[str]:
    """``"a=1 b='x y'"`` -> ``["a=1", "b='x y'"]`` (spaces inside quotes kept)."""
    pairs, current, quote = [], "", None
    for ch in text.strip():
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        if ch == " " and quote is None:
            if current:
                pairs.append(current)
            current = ""
            continue
        current += ch
    if current:
        pairs.append(current)
    return pairs


def app_defaults(app_dir: Path = PROJECT_ROOT) -> dict[str, object]:
    """The ``[tool.flwr.app.config]`` table of the app's pyproject.toml."""
    with (app_dir / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)["tool"]["flwr"]["app"]["config"]


def check_run_config(run_config: dict[str, object]) -> Settings:
    """Fail before starting Flower on keys the app does not declare or bad values."""
    defaults = app_defaults()
    unknown = sorted(set(run_config) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown run-config key(s) {', '.join(unknown)}: the app declares {', '.join(defaults)}.")
    return Settings.from_run_config({**defaults, **run_config})


def run_simulation(
    run_config: dict[str, object],
    num_supernodes: int,
    output_dir: Path,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    echo: bool = True,
) -> Path:
    """Run the app in simulation and return its run folder."""
    check_run_config(run_config)
    output_dir = output_dir.expanduser().resolve()
    run_name = str(run_config.get("run-name") or f"{time.strftime('%Y%m%d-%H%M%S')}-{run_config.get('model', 'mlp')}")
    config = {**run_config, "output-dir": str(output_dir), "run-name": run_name}
    federation = {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": _whole(cpus_per_client),
        "client-resources-num-gpus": _whole(gpus_per_client),
    }
    with flower_home() as home:
        address = start_superlink(home, simulation=True)
        home.add_connection(CONNECTION, address)
        flwr_run(home, CONNECTION, config, federation, echo=echo)
    return output_dir / run_name


def _whole(x: float) -> float | int:
    """Flower wants ``1`` rather than ``1.0`` for a whole number of CPUs or GPUs."""
    return int(x) if float(x).is_integer() else x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-supernodes", type=int, default=100, help="virtual clients (default 100)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where run folders go (default ./outputs)")
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="a preset TOML file or 'key=value ...'; repeat to combine, later ones win",
    )
    parser.add_argument("--report", action="store_true", help="write report.md (federated vs central) into the run folder")
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--gpus-per-client", type=float, default=0.0, help="e.g. 0.25 to share one GPU by 4 clients")
    args = parser.parse_args(argv)
    if args.num_supernodes < 1:
        parser.error(f"--num-supernodes={args.num_supernodes}: use 1 or more.")
    run_config = parse_run_config(args.run_config)
    try:
        run_dir = run_simulation(
            run_config, args.num_supernodes, args.output_dir, args.cpus_per_client, args.gpus_per_client
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FlowerError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    print(f"\nRun folder: {run_dir}")
    if args.report:
        from report import ReportError, make_report  # the report sits downstream of the run

        print("\nReport: training the central baseline and the local models to compare with ...", flush=True)
        try:
            print(f"Report: {make_report(run_dir)}")
        except ReportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
