"""ServerApp: FedAvg over the nodes, the global model evaluated on the server.

Before round 1 the nodes say which shard they hold and the run folder is
created (or, with ``resume-from``, the last checkpoint of an earlier run is
loaded). Before round 1 and after every round the global model is tested on
all 10,000 MNIST test images, ``history.json`` is rewritten and a checkpoint
is written, so a run can be followed while it goes and continued after a crash.
"""

from __future__ import annotations

from logging import ERROR, INFO

import flwr
import torch
from flwr.app import Array, ArrayRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from run_folder import COMPLETED, FAILED, Checkpoint, RunFolder
from server_app.history import HistoryRecorder
from server_app.nodes import NodeBook, wait_for_nodes
from server_app.records import ServerLog, TensorBoardLog, build_manifest
from server_app.rounds import RoundRunner
from server_app.strategy import check_fits
from server_app.tracking import MlflowLog
from task import simulation_patches
from task.config import Settings
from task.data import Batchable, release_mnist
from task.errors import ConfigError, UserError
from task.flower_compat import add_exit_handler
from task.models import build_model
from task.shards import server_test_set, train_shards
from task.training import evaluate, pick_device, set_weights

# How long to wait for min-available-nodes to connect before round 1.
NODE_WAIT_S = 3600.0
# Knobs a resumed run may change: where it goes, how long it runs and how it tolerates faults.
RESUMABLE_CHANGES = frozenset(
    {
        "num-server-rounds",
        "run-name",
        "output-dir",
        "resume-from",
        "min-available-nodes",
        "min-train-replies",
        "round-timeout",
        "round-retries",
        "device",
        "data-dir",
        "central-epochs",
        "fault-injection",
        "tracking",
        "tracking-uri",
    }
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    simulation_patches.install(grid)  # in Flower's simulation only, before it starts Ray: see the module
    try:
        settings = Settings.from_run_config(dict(context.run_config))
        test_set = server_test_set(settings)  # fails early if MNIST is missing or corrupt
        device = pick_device(settings.device)
        resumed = _checkpoint_to_resume(settings)
        book = NodeBook()
        num_partitions = book.start(grid, wait_for_nodes(grid, settings.min_available_nodes, NODE_WAIT_S), NODE_WAIT_S)
        check_fits(settings, len(book.available()))  # e.g. Bulyan with too few nodes for the malicious ones assumed
        # a partitioning that cannot fit these nodes stops here; the shard sizes let replies be averaged as they come
        shard_sizes = [len(shard) for shard in train_shards(settings, num_partitions)]
        TensorBoardLog.check_available(settings.tensorboard)
        MlflowLog.check_available(settings)
        folder = RunFolder.create(settings.output_dir, settings.run_name, settings.model, context.run_id)
    except UserError as exc:
        log(ERROR, "Run not started: %s", exc)
        raise  # marks the run failed, with this message as its status details

    with ServerLog(folder):
        _run(grid, context, settings, test_set, device, book, num_partitions, folder, resumed, shard_sizes)


def _run(
    grid: Grid,
    context: Context,
    settings: Settings,
    test_set: Batchable,
    device: torch.device,
    book: NodeBook,
    num_partitions: int,
    folder: RunFolder,
    resumed: tuple[RunFolder, Checkpoint] | None,
    shard_sizes: list[int] | None = None,
) -> None:
    """The rounds, with the run folder made and the log going into it."""
    _write_run_start(folder, settings, context.run_id, num_partitions, resumed)
    model = build_model(settings)
    runner = RoundRunner(settings, book, expected_examples=shard_sizes)
    recorder = HistoryRecorder(
        folder, settings, TensorBoardLog(folder, settings.tensorboard), MlflowLog(folder, settings)
    )
    arrays, first_round = ArrayRecord(model.state_dict()), 1
    if resumed is not None:
        arrays, first_round = _resume(resumed, recorder, runner)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        set_weights(model, arrays.to_numpy_ndarrays())
        return evaluate(model, test_set, device, settings.objective)

    # `flwr stop`, Ctrl-C or a container stopping reach the ServerApp as a signal, which
    # Flower turns into a graceful exit: the history then says 'interrupted'.
    add_exit_handler(
        lambda: recorder.interrupted("stopped by a signal (flwr stop, Ctrl-C or shutdown)"), run_before_force_exit=True
    )
    try:
        if resumed is None:
            recorder.record(0, evaluate_global(0, arrays), num_nodes=len(book.available()))
        for server_round in range(first_round, settings.num_server_rounds + 1):
            trained = runner.train(grid, server_round, arrays)
            arrays = trained.arrays
            evaluated = runner.evaluate(grid, server_round, arrays)
            recorder.record(
                server_round,
                evaluate_global(server_round, arrays),
                num_nodes=len(book.available()),
                clients_train=trained.metrics,
                clients_evaluate=evaluated.metrics,
                failures=trained.failures + evaluated.failures,
            )
            _save_round(folder, server_round, arrays, recorder, runner)
        set_weights(model, arrays.to_numpy_ndarrays())
        folder.write_model(model.state_dict())
    except KeyboardInterrupt:
        recorder.interrupted("stopped by SIGINT")
        raise
    except BaseException as exc:
        if not recorder.finished:
            recorder.write(FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        recorder.tensorboard.close()
    recorder.write(COMPLETED)
    log(INFO, "Run complete: %s", folder.path)


def _resume(
    resumed: tuple[RunFolder, Checkpoint], recorder: HistoryRecorder, runner: RoundRunner
) -> tuple[ArrayRecord, int]:
    """The global model and the first round to run, from an earlier run's last checkpoint."""
    old, checkpoint = resumed
    recorder.resume(checkpoint)
    runner.restore(checkpoint.strategy_state)
    log(INFO, "Resuming %s after round %d", old.path, checkpoint.server_round)
    return ArrayRecord({k: Array(v) for k, v in checkpoint.arrays.items()}), checkpoint.server_round + 1


def _write_run_start(
    folder: RunFolder,
    settings: Settings,
    run_id: int,
    num_partitions: int,
    resumed: tuple[RunFolder, Checkpoint] | None,
) -> None:
    """The manifest and config.json, written once before round 1."""
    log(INFO, "Writing results to %s", folder.path)
    folder.write_manifest(build_manifest(settings, num_partitions, run_id))
    release_mnist()  # the shards are cut and hashed: from here on the server needs only its test set (55 MB less)
    config = {
        **settings.to_run_config(),
        "run-id": run_id,
        "flwr-version": flwr.__version__,
        "num-partitions": num_partitions,
    }
    if resumed is not None:
        config["resumed-from"] = str(resumed[0].path)
    folder.write_config(config)


def _save_round(
    folder: RunFolder, server_round: int, arrays: ArrayRecord, recorder: HistoryRecorder, runner: RoundRunner
) -> None:
    """The checkpoint after a round: what resume-from needs to go on from here."""
    arrays_np = {k: v.numpy() for k, v in arrays.items()}
    folder.write_checkpoint(Checkpoint(server_round, arrays_np, recorder.rounds, recorder.num_nodes, runner.state()))


def _checkpoint_to_resume(settings: Settings) -> tuple[RunFolder, Checkpoint] | None:
    """The earlier run and its last checkpoint, checked against this run's knobs."""
    if not settings.resume_from:
        return None
    old = RunFolder.open(settings.resume_from)
    before, now = old.settings().to_run_config(), settings.to_run_config()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
    if changed:
        shown = ", ".join(f"{k}={before.get(k)!r} there, {now[k]!r} here" for k in changed)
        raise ConfigError(
            f"resume-from='{old.path}' ran with other settings ({shown}): resume with the same values, "
            "or start a new run."
        )
    checkpoint = old.read_checkpoint()
    if checkpoint.server_round >= settings.num_server_rounds:
        raise ConfigError(
            f"resume-from='{old.path}' already has {checkpoint.server_round} rounds and num-server-rounds="
            f"{settings.num_server_rounds}: raise num-server-rounds to continue it."
        )
    return old, checkpoint
