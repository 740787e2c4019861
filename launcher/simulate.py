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
import time
import tomllib
from pathlib import Path

from launcher.flower import PROJECT_ROOT, FlowerError, flower_home, flwr_run, start_superlink
from task.config import ConfigError, Settings
from task.data import DataError

CONNECTION = "local-simulation"
DEFAULT_OUTPUT_DIR = Path("outputs")
DEFAULT_TIMEOUT_S = 3600.0


def parse_run_config(items: list[str]) -> dict[str, object]:
    """Merge ``--run-config`` items in order: TOML files (presets) and ``k=v`` strings.
    Raises :class:`ConfigError` naming the item, so a typo is one line, not a traceback."""
    merged: dict[str, object] = {}
    for item in items:
        if item.endswith(".toml"):
            merged.update(_read_preset(Path(item)))
            continue
        try:
            merged.update(tomllib.loads("\n".join(_split_pairs(item))))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--run-config '{item}' is not 'key=value ...' in TOML syntax ({exc}).") from None
    return merged


def _read_preset(path: Path) -> dict[str, object]:
    """One preset file; a missing, unreadable or malformed one is a ConfigError naming it."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--run-config file {path} does not exist (presets are in presets/).") from None
    except OSError as exc:
        raise ConfigError(f"--run-config file {path} cannot be read ({exc.strerror or exc}).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--run-config file {path} is not valid TOML ({exc}): fix the file.") from None


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


def check_nodes(settings: Settings, num_supernodes: int) -> None:
    """Fail before starting Flower on a federation the run cannot use: the
    ServerApp would wait forever for missing nodes, or every ClientApp would
    fail to cut its shard (the same split the nodes make, on MNIST's labels)."""
    if settings.min_available_nodes > num_supernodes:
        raise ConfigError(
            f"min-available-nodes={settings.min_available_nodes} is more than --num-supernodes={num_supernodes}, "
            "so the run would wait forever for nodes: lower min-available-nodes or raise --num-supernodes."
        )
    from task.shards import test_shards, train_shards  # brings torch: only when a run starts

    try:
        train_shards(settings, num_supernodes)
        test_shards(settings, num_supernodes)
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
        from server_app.outputs import resolve_output_dir  # brings torch: only when a run starts

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
    run_name = str(run_config.get("run-name") or f"{time.strftime('%Y%m%d-%H%M%S')}-{settings.model}")
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
    try:
        run_config = parse_run_config(args.run_config)
        run_dir = run_simulation(
            run_config,
            args.num_supernodes,
            args.output_dir,
            args.cpus_per_client,
            args.gpus_per_client,
            timeout=args.timeout,
        )
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FlowerError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    print(f"\nRun folder: {run_dir}")
    if args.report:
        return _report(run_dir)
    return 0


def _report(run_dir: Path) -> int:
    """Write the report; a failure is one line, and the run folder stays as it is."""
    from report import ReportError, make_report  # the report sits downstream of the run

    print("\nReport: training the central baseline and the local models to compare with ...", flush=True)
    try:
        print(f"Report: {make_report(run_dir)}")
    except (ReportError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
