"""Run one federated simulation on Flower's real runtime (SuperLink + Ray), isolated.

    python -m launcher.simulate --num-supernodes 100 --output-dir outputs \\
        --run-config presets/tutorial.toml --run-config "num-server-rounds=3"

Checks the run config, the node count and the partitioning first, then starts
its own ``flower-superlink --simulation`` on free ports with a temporary Flower
home (so no other SuperLink on the machine is used or left behind), runs
``flwr run . --stream``, waits for ``finished:completed`` (at most --timeout
seconds), stops the SuperLink and prints the run folder. The run ends when its
ServerApp ends: once the run folder's history says ``completed`` or ``failed``,
Flower gets a few seconds to finish on its own, and is then stopped even if a
client is still stuck (one line names the clients abandoned; see launcher/ending.py).

On a machine with an NVIDIA GPU the virtual clients get a share of it by default
(``--gpus-per-client``, 0.25: four clients per GPU), and the launcher says so;
``--gpus-per-client 0`` keeps them on the CPU. ``--ray-address HOST:PORT`` (or
``RAY_ADDRESS`` in the environment) runs the virtual clients on an existing Ray
cluster instead of a Ray started for this run.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from launcher import PROJECT_ROOT, FlowerError
from launcher.console import RunWatcher
from launcher.ending import COMPLETED, ServerAppEnd, abandoned_line
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.gpus import visible_gpus
from launcher.runtime import start_superlink
from launcher.timings import mark
from task.config import ConfigError, Settings
from task.errors import run_cli
from task.flower_compat import get_project_config, parse_config_args
from task.ray_lean import malloc_env

CONNECTION = "local-simulation"
DEFAULT_OUTPUT_DIR = Path("outputs")
DEFAULT_TIMEOUT_S = 3600.0
# Clients' share of a GPU when the machine has one and --gpus-per-client is not given:
# four virtual clients train side by side on each GPU (each holds a CUDA context of a
# few hundred MB; the models are small).
DEFAULT_GPU_SHARE = 0.25


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
    from task.data import release_mnist
    from task.shards import local_test_shards, train_shards

    try:
        local_test_shards(settings, num_supernodes, train=train_shards(settings, num_supernodes))
    except ConfigError as exc:
        fit = f"--num-supernodes={num_supernodes} does not fit partitioning='{settings.partitioning}'"
        raise ConfigError(f"{fit}: {exc}") from None
    finally:
        release_mnist()  # the launcher trains nothing: no reason to hold MNIST through the run


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


def gpu_share(requested: float | None, gpus: list[str], device: str = "auto") -> tuple[float, str | None]:
    """Each virtual client's share of a GPU, and what to tell the user about it.

    ``requested`` (``--gpus-per-client``) wins when given. Otherwise clients get
    :data:`DEFAULT_GPU_SHARE` of a GPU when the machine shows one and the run
    config does not pin ``device='cpu'``, and nothing on a CPU-only machine
    (Ray then hides GPUs from the clients)."""
    if requested is not None:
        if requested > 0 and not gpus:
            return requested, f"--gpus-per-client={requested:g} but no NVIDIA GPU is visible here: Ray will find none."
        return requested, None
    if not gpus or device == "cpu":
        return 0.0, None
    per_gpu = round(1 / DEFAULT_GPU_SHARE)
    return DEFAULT_GPU_SHARE, (
        f"GPU found ({', '.join(gpus)}): each virtual client gets {DEFAULT_GPU_SHARE:g} of a GPU "
        f"({per_gpu} train side by side on each); the ServerApp and the report use it too. "
        "--gpus-per-client 0 keeps the clients on the CPU."
    )


def federation_config(num_supernodes: int, cpus_per_client: float = 1.0, gpus_per_client: float = 0.0) -> dict:
    """The simulation's ``--federation-config``. The CPU share is also each client's
    PyTorch thread count (Ray sets ``OMP_NUM_THREADS`` from it), and a different thread
    count changes the last bits of training: runs compare bit for bit only with the same share."""
    return {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": _whole(cpus_per_client),
        "client-resources-num-gpus": _whole(gpus_per_client),
    }


def where_clients_run(
    ray_address: str | None, gpus_per_client: float | None, device: str
) -> tuple[dict[str, str | None], float, str | None]:
    """The SuperLink's environment (``RAY_ADDRESS``: a Ray of its own unless one is given), each
    client's GPU share (see :func:`gpu_share`) and what to tell the user about both."""
    if ray_address:  # this machine's GPUs say nothing about the cluster's: only an explicit share
        note = f"Virtual clients run on the Ray cluster at {ray_address}."
        # Every client's line naming its node reaches flower.log, not folded into "[repeated Nx]".
        return {"RAY_ADDRESS": ray_address, "RAY_DEDUP_LOGS": "0"}, gpus_per_client or 0.0, note
    gpus = visible_gpus() if gpus_per_client != 0 else []
    share, note = gpu_share(gpus_per_client, gpus, device)
    return {"RAY_ADDRESS": None}, share, note


def run_simulation(
    run_config: dict[str, object],
    num_supernodes: int,
    output_dir: Path | None = None,
    cpus_per_client: float = 1.0,
    gpus_per_client: float | None = 0.0,
    echo: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    ray_address: str | None = None,
    verbose: bool = False,
) -> Path:
    """Run the app in simulation and return its run folder (see :func:`pick_output_dir`).
    Raises ConfigError (or DataError) before anything starts when the run cannot work.

    ``echo`` shows a progress line per round and a summary (``verbose``: Flower's and
    Ray's own records instead of the progress line); either way those records go to
    the run folder's ``flower.log``. ``gpus_per_client=None`` picks the share as
    :func:`gpu_share` says (and prints why when ``echo``). ``ray_address`` joins that Ray cluster (the simulation's
    ``ray.init()`` reads ``RAY_ADDRESS``) instead of starting a Ray for this run."""
    settings = check_run_config(run_config)
    check_nodes(settings, num_supernodes)
    output_dir = pick_output_dir(output_dir, run_config)
    if ray_address:  # every node of the cluster must be able to run the clients
        from launcher.ray_cluster import check_cluster

        check_cluster(ray_address, settings.data_dir, cpus_per_client, echo)
    mark("checks done")
    env, gpus_per_client, note = where_clients_run(ray_address, gpus_per_client, settings.device)
    # --verbose: the workers' output in flower.log needs Ray's log monitor (task/ray_lean.py); otherwise the
    # SuperLink, the SuperExec and the simulation process allocate the lean way from their start
    env = {**env, "FEDMNIST_RAY_FULL": "1"} if verbose else {**malloc_env(), **env}
    if note and echo:
        print(note, flush=True)
    names: dict[str, str] = {}
    ends: list[ServerAppEnd] = []

    def name_the_run() -> None:
        if run_config.get("run-name"):
            names["run"] = str(run_config["run-name"])
        else:
            from run_folder import default_run_name  # imports torch: done while the SuperLink starts

            names["run"] = default_run_name(settings.model)
        ends.append(ServerAppEnd.of(output_dir / names["run"]))  # run_folder too: while the SuperLink starts

    federation = federation_config(num_supernodes, cpus_per_client, gpus_per_client)
    # Outside flower_home: the run folder is marked only once Flower's processes are stopped.
    with _interrupted_on_failure(lambda: output_dir / names["run"] if "run" in names else None):
        with flower_home() as home:
            address = start_superlink(home, simulation=True, env=env, while_starting=name_the_run)
            home.add_connection(CONNECTION, address)
            config = {**run_config, "output-dir": str(output_dir), "run-name": names["run"]}
            watcher = RunWatcher(
                output_dir / names["run"], settings.num_server_rounds, settings.objective, echo, verbose
            )
            end = ends[0]
            with watcher:
                run_id = flwr_run(
                    home,
                    CONNECTION,
                    config,
                    federation,
                    echo=False,
                    timeout=timeout,
                    on_line=watcher.on_line,
                    ended=end,
                )
            if end.expired:  # leaving flower_home stops the SuperLink, the simulation and the stuck clients
                if echo and not end.done:  # a completed run with every client answered: nothing abandoned
                    print(abandoned_line(end), flush=True)
                if end.status != COMPLETED:
                    raise FlowerError(f"Run {run_id} failed: {end.history.get('error') or 'no error recorded'}")
    return output_dir / names["run"]


@contextmanager
def _interrupted_on_failure(run_dir: Callable[[], Path | None]) -> Iterator[None]:
    """A run that ends here without its ServerApp writing so (stopped with `flwr stop`, which
    kills a simulation outright; Ctrl-C; SIGTERM; a SuperLink gone) must not read 'running' forever."""
    try:
        yield
    except KeyboardInterrupt as exc:
        _mark_interrupted(run_dir(), str(exc) or "stopped by Ctrl-C")
        raise
    except FlowerError as exc:
        _mark_interrupted(run_dir(), str(exc))
        raise


def _mark_interrupted(run_dir: Path | None, why: str) -> None:
    if run_dir is not None and run_dir.is_dir():
        from run_folder import RunFolder  # imports torch: only once a run has ended badly

        RunFolder(run_dir).mark_interrupted(why)


def record_origin(run_dir: Path, command: list[str]) -> None:
    """Add to the run's manifest what only this process knows: the command and the checkout."""
    import shlex

    from run_folder import RunFolder, RunFolderError

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    try:
        RunFolder.open(run_dir).update_manifest(
            command=shlex.join(command),
            git={"commit": commit, "clean": status == "" if status is not None else None} if commit else None,
        )
    except RunFolderError:  # the run never made its folder: nothing to add to
        pass


def _whole(x: float) -> float | int:
    """Flower wants ``1`` rather than ``1.0`` for a whole number of CPUs or GPUs."""
    return int(x) if float(x).is_integer() else x


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--report", action="store_true", help="write report.md (federated vs central) into the run folder"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Flower's and Ray's own records instead of the progress line"
    )
    parser.add_argument("--cpus-per-client", type=float, default=1.0, help="CPU cores per virtual client (default 1)")
    parser.add_argument(
        "--gpus-per-client",
        type=float,
        default=None,
        help=f"share of a GPU per virtual client, e.g. 0.25 for 4 per GPU (default: {DEFAULT_GPU_SHARE:g} when "
        "an NVIDIA GPU is visible, else 0)",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS") or None,
        help="run the virtual clients on this existing Ray cluster (HOST:PORT of its head, as `ray start "
        "--head` prints; default: $RAY_ADDRESS, else a Ray started for this run)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds the run may take before it is stopped (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    return parser


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2, with the usage) counts, shares and times that cannot work."""
    if args.num_supernodes < 1:
        parser.error(f"--num-supernodes={args.num_supernodes}: use 1 or more.")
    if not 0 < args.timeout < math.inf:
        parser.error(f"--timeout={args.timeout}: use a number of seconds > 0.")
    if not 0 < args.cpus_per_client < math.inf:
        parser.error(f"--cpus-per-client={args.cpus_per_client}: use a number of cores > 0.")
    if args.gpus_per_client is not None and not 0 <= args.gpus_per_client < math.inf:
        parser.error(f"--gpus-per-client={args.gpus_per_client}: use 0 or a share > 0 (0.25: 4 clients per GPU).")


def simulate_from_args(args: argparse.Namespace, command: list[str]) -> int:
    """Run what the command line asks for; print the run folder and, with ``--report``, the
    report. Exit 1 when Flower failed, 130 when stopped (Ctrl-C, SIGTERM)."""
    try:
        run_dir = run_simulation(
            parse_run_config(args.run_config),
            args.num_supernodes,
            args.output_dir,
            args.cpus_per_client,
            args.gpus_per_client,
            timeout=args.timeout,
            ray_address=args.ray_address,
            verbose=args.verbose,
        )
    except FlowerError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(
            f"\n{exc or 'stopped by Ctrl-C'}: Flower's processes were stopped; an unfinished run folder "
            "resumes with --run-config \"resume-from='/absolute/path/to/it'\"",
            file=sys.stderr,
        )
        return 130
    record_origin(run_dir, command)
    print(f"Run folder: {run_dir}")
    if args.report:
        from report import make_report  # the report sits downstream of the run

        print("\nReport: training the central baseline and the local models to compare with ...", flush=True)
        print(f"Report: {make_report(run_dir)}")
    from server_app.tracking import MlflowLog  # the commit and the report, into the run's MLflow run (if any)

    MlflowLog.after_run(run_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_numbers(parser, args)
    command = ["python", "-m", "launcher.simulate", *(sys.argv[1:] if argv is None else argv)]
    return run_cli(lambda: simulate_from_args(args, command))


if __name__ == "__main__":
    sys.exit(main())
