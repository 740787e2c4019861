"""ServerApp: FedAvg over the nodes, the global model evaluated on the server.

Before round 1 the nodes say which shard they hold and the run folder is
created; before round 1 and after every round the global model is tested on all
10,000 MNIST test images and ``history.json`` is rewritten, so the progress of
a long run can be followed (and survives a stop).
"""

from __future__ import annotations

import time
from logging import ERROR, INFO

import flwr
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from run_folder import COMPLETED, FAILED, RUNNING, RunFolder
from server_app.nodes import ask_partitions, check_partitions, wait_for_nodes
from server_app.strategy import CheckedFedAvg
from task.config import Settings
from task.errors import UserError
from task.models import build_model
from task.shards import server_test_set
from task.training import evaluate, pick_device, set_weights

# How long to wait for min-available-nodes to connect, and for them to say which shard they hold.
NODE_WAIT_S = 3600.0

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = Settings.from_run_config(dict(context.run_config))
        test_set = server_test_set(settings)  # fails early if MNIST is missing or corrupt
        device = pick_device(settings.device)
        nodes = wait_for_nodes(grid, settings.min_available_nodes, NODE_WAIT_S)
        num_partitions = check_partitions(ask_partitions(grid, nodes, NODE_WAIT_S))
        folder = RunFolder.create(settings.output_dir, settings.run_name, settings.model, context.run_id)
    except UserError as exc:
        log(ERROR, "Run not started: %s", exc)
        raise  # marks the run failed, with this message as its status details

    log(INFO, "Writing results to %s", folder.path)
    folder.write_config(
        {
            **settings.to_run_config(),
            "run-id": context.run_id,
            "flwr-version": flwr.__version__,
            "num-partitions": num_partitions,
        }
    )
    model = build_model(settings)
    strategy = CheckedFedAvg(
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if settings.fraction_evaluate > 0 else 0,
        min_available_nodes=settings.min_available_nodes,
    )
    recorder = HistoryRecorder(folder, settings, strategy, grid)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_weights(model, arrays.to_numpy_ndarrays())
        metrics = evaluate(model, test_set, device, settings.objective)
        recorder.record(server_round, metrics)
        return MetricRecord(metrics)

    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=settings.num_server_rounds,
            train_config=ConfigRecord({}),
            evaluate_fn=evaluate_global,
        )
        set_weights(model, result.arrays.to_numpy_ndarrays())
        folder.write_model(model.state_dict())
    except BaseException as exc:
        recorder.write(FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    recorder.write(COMPLETED)
    log(INFO, "Run complete: %s", folder.path)


class HistoryRecorder:
    """Collects each round's server and client metrics, rewrites the history, logs progress."""

    def __init__(self, folder: RunFolder, settings: Settings, strategy: CheckedFedAvg, grid: Grid) -> None:
        self.folder = folder
        self.settings = settings
        self.strategy = strategy
        self.grid = grid
        self.rounds: list[dict] = []
        self.started = self.last = time.monotonic()
        self.num_nodes = 0

    def record(self, server_round: int, server_metrics: dict[str, float]) -> None:
        now = time.monotonic()
        self.num_nodes = max(self.num_nodes, len(list(self.grid.get_node_ids())))
        entry = {
            "round": server_round,
            "server": server_metrics,
            "clients-train": self.strategy.train_metrics.get(server_round),
            "clients-evaluate": self.strategy.evaluate_metrics.get(server_round),
            "wall-time-s": round(now - self.last, 3),
            "elapsed-s": round(now - self.started, 3),
        }
        self.last = now
        self.rounds.append(entry)
        self.write(RUNNING)
        objective = self.settings.objective
        stage = self.settings.pretrain_stage(server_round)
        log(
            INFO,
            "Round %d/%d: server %s %s, loss %.4f (%.1f s)%s",
            server_round,
            self.settings.num_server_rounds,
            objective.label,
            objective.format(server_metrics[objective.key]),
            server_metrics["loss"],
            entry["wall-time-s"],
            "" if stage is None else f" [pretraining pair {stage + 1}/{self.settings.ae_num_stages}]",
        )

    def write(self, status: str, error: str | None = None) -> None:
        self.folder.write_history(status, self.rounds, self.num_nodes, error)
