"""Run one federated simulation on Flower's real runtime (SuperLink + Ray), isolated.

    python -m launcher.simulate --num-supernodes 100 --output-dir outputs \\
        --run-config presets/tutorial.toml --run-config "num-server-rounds=3"

Checks the run config, the node count and the partitioning first, then starts
its own ``flower-superlink --simulation`` on free ports with a temporary Flower
home (so no other SuperLink on the machine is used or left behind), runs
``flwr run . --stream``, waits for ``finished:completed`` (at most --timeout
seconds), stops the SuperLink and prints the run folder.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import click
from flwr.common.config import get_project_config, parse_config_args

from launcher.flower import PROJECT_ROOT, FlowerError, flower_home, flwr_run, start_superlink
from task.config import ConfigError, Settings
from task.errors import run_cli

CONNECTION = "local-simulation"
DEFAULT_OUTPUT_DIR = Path("outputs")
DEFAULT_TIMEOUT_S = 3600.0


def parse_run_config(items: list[str]) -> dict[str, object]:
    """Merge ``--run-config`` items in order (later ones win): preset TOML files and
    ``k=v`` strings, each read by Flower's own parser. Raises :class:`ConfigError`
    naming the item, so a typo is one line, not a traceback."""
    merged: dict[str, object] = {}
    for item in items:
        if item.endswith(".toml") and not Path(item).expanduser().exists():
            raise ConfigError(f"--run-config file {item} does not exist (presets are in presets/).")
        try:
            values = parse_config_args([item])
        except (OSError, ValueError, click.ClickException) as exc:  # TOMLDecodeError is a ValueError
            detail = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            raise ConfigError(f"--run-config '{item}' cannot be read ({detail}).") from None
        if item.strip() and not values:
            raise ConfigError(f"--run-config '{item}' holds no 'key=value' pair: write e.g. \"num-server-rounds=3\".")
        merged.update(values)
    return merged


def app_defaults(app_dir: Path = PROJECT_ROOT) -> dict[str, object]:
    """The ``[tool.flwr.app.config]`` table of the app's pyproject.toml, as Flower reads it."""
    return get_project_config(app_dir)["tool"]["flwr"]["app"]["config"]


def check_run_config(run_config: dict[str, object]) -> Settings:
    """Fail before starting Flower on keys the app does not declare or bad values."""
    defaults = app_defaults()
    unknown = sorted(set(run_config) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown run-config key(s) {', '.join(unknown)}: the app declares {', '.join(defaults)}.")
    return Settings.from_run_config({**defaults, **run_config})


def check_nodes(settings: Settings, num_supernodes: int) -> None:
    """Fail before starting Flower on a federation the run cannot use: the
    ServerApp would wait forever for missing nodes, or every ClientApp would
    fail to cut its shard (the same split the nodes make, on MNIST's labels)."""
    if settings.min_available_nodes > num_supernodes:
        raise ConfigError(
            f"min-available-nodes={settings.min_available_nodes} is more than --num-supernodes={num_supernodes}, "
            "so the run would wait forever for nodes: lower min-available-nodes or raise --num-supernodes."
        )
    from task.shards import local_test_shards, train_shards  # brings torch: only when a run starts

    try:
        train_shards(settings, num_supernodes)
        local_test_shards(settings, num_supernodes)
    except ConfigError as exc:
        fit = f"--num-supernodes={num_supernodes} does not fit partitioning='{settings.partitioning}'"
        raise ConfigError(f"{fit}: {exc}") from None


def pick_output_dir(flag: Path | None, run_config: dict[str, object]) -> Path:
    """Where the run folder goes: ``--output-dir`` if given, else the run config's
    ``output-dir`` (absolute, or relative to the home folder, as the app reads it),
    else ``./outputs``."""
    if flag is not None:
        return flag.expanduser().resolve()
    if run_config.get("output-dir"):
        from run_folder import resolve_output_dir  # brings torch: only when a run starts

        return resolve_output_dir(str(run_config["output-dir"])).resolve()
    return DEFAULT_OUTPUT_DIR.resolve()


def run_simulation(
    run_config: dict[str, object],
    num_supernodes: int,
    output_dir: Path | None = None,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    echo: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Run the app in simulation and return its run folder (see :func:`pick_output_dir`).
    Raises ConfigError (or DataError) before anything starts when the run cannot work."""
    settings = check_run_config(run_config)
    check_nodes(settings, num_supernodes)
    output_dir = pick_output_dir(output_dir, run_config)
    from run_folder import default_run_name

    run_name = str(run_config.get("run-name") or default_run_name(settings.model))
    config = {**run_config, "output-dir": str(output_dir), "run-name": run_name}
    federation = {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": _whole(cpus_per_client),
        "client-resources-num-gpus": _whole(gpus_per_client),
    }
    with flower_home() as home:
        address = start_superlink(home, simulation=True)
        home.add_connection(CONNECTION, address)
        flwr_run(home, CONNECTION, config, federation, echo=echo, timeout=timeout)
    return output_dir / run_name


def _whole(x: float) -> float | int:
    """Flower wants ``1`` rather than ``1.0`` for a whole number of CPUs or GPUs."""
    return int(x) if float(x).is_integer() else x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-supernodes", type=int, default=100, help="virtual clients (default 100)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where run folders go (default: the run config's output-dir if one is given, "
        "absolute or relative to your home folder; else ./outputs)",
    )
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="a preset TOML file or 'key=value ...'; repeat to combine, later ones win",
    )
    parser.add_argument("--report", action="store_true", help="write report.md (federated vs central) into the run folder")
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--gpus-per-client", type=float, default=0.0, help="e.g. 0.25 to share one GPU by 4 clients")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds the run may take before it is stopped (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    args = parser.parse_args(argv)
    if args.num_supernodes < 1:
        parser.error(f"--num-supernodes={args.num_supernodes}: use 1 or more.")
    if not 0 < args.timeout < math.inf:
        parser.error(f"--timeout={args.timeout}: use a number of seconds > 0.")

    def simulate() -> int:
        try:
            run_dir = run_simulation(
                parse_run_config(args.run_config),
                args.num_supernodes,
                args.output_dir,
                args.cpus_per_client,
                args.gpus_per_client,
                timeout=args.timeout,
            )
        except FlowerError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
        print(f"\nRun folder: {run_dir}")
        if args.report:
            from report import make_report  # the report sits downstream of the run

            print("\nReport: training the central baseline and the local models to compare with ...", flush=True)
            print(f"Report: {make_report(run_dir)}")
        return 0

    return run_cli(simulate)


if __name__ == "__main__":
    sys.exit(main())
