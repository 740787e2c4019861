"""ServerApp: FedAvg over the nodes, the global model evaluated on the server.

Before round 1 and after every round the global model is tested on all 10,000
MNIST test images, and the run folder's ``history.json`` is rewritten, so the
progress of a long run can be followed (and survives a stop).
"""

from __future__ import annotations

import time
from logging import ERROR, INFO
from pathlib import Path

import flwr
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from server_app.outputs import CONFIG_FILE, HISTORY_FILE, MODEL_FILE, new_run_dir, write_json, write_model
from server_app.strategy import CheckedFedAvg
from task.config import ConfigError, Settings
from task.data import DataError
from task.models import build_model
from task.shards import server_test_set
from task.training import evaluate, metric_key, pick_device, set_weights

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = Settings.from_run_config(dict(context.run_config))
        test_set = server_test_set(settings)  # fails early if MNIST is missing or corrupt
        device = pick_device(settings.device)
    except (ConfigError, DataError) as exc:
        log(ERROR, "Run not started: %s", exc)
        raise  # marks the run failed, with this message as its status details

    model = build_model(settings)
    run_dir = new_run_dir(settings.output_dir, settings.run_name, settings.model, context.run_id)
    log(INFO, "Writing results to %s", run_dir)
    config = {**settings.to_run_config(), "run-id": context.run_id, "flwr-version": flwr.__version__}
    write_json(run_dir / CONFIG_FILE, config)

    strategy = CheckedFedAvg(
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1 if settings.fraction_evaluate > 0 else 0,
        min_available_nodes=settings.min_available_nodes,
    )
    recorder = HistoryRecorder(run_dir, settings, strategy, grid)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_weights(model, arrays.to_numpy_ndarrays())
        metrics = evaluate(model, test_set, device)
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
        write_model(run_dir / MODEL_FILE, model.state_dict())
        config["num-nodes"] = recorder.num_nodes
        partitions = sorted(strategy.num_partitions)
        if partitions:
            config["num-partitions"] = partitions[0] if len(partitions) == 1 else partitions
        write_json(run_dir / CONFIG_FILE, config)
    except BaseException as exc:
        recorder.finish(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    recorder.finish()
    log(INFO, "Run complete: %s (config.json, history.json, model.pt)", run_dir)


class HistoryRecorder:
    """Builds ``history.json`` one round at a time and logs a progress line."""

    def __init__(self, run_dir: Path, settings: Settings, strategy: CheckedFedAvg, grid: Grid) -> None:
        self.path = run_dir / HISTORY_FILE
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
        self._write("running")
        key = metric_key(self.settings.model)
        value = server_metrics[key]
        shown = f"{100 * value:.2f}%" if key == "accuracy" else f"{value:.5f} per pixel"
        stage = self.settings.pretrain_stage(server_round)
        log(
            INFO,
            "Round %d/%d: server test %s %s, loss %.4f (%.1f s)%s",
            server_round,
            self.settings.num_server_rounds,
            key,
            shown,
            server_metrics["loss"],
            entry["wall-time-s"],
            "" if stage is None else f" [pretraining pair {stage + 1}/{self.settings.ae_num_stages}]",
        )

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        self._write(status, error)

    def _write(self, status: str, error: str | None = None) -> None:
        history = {"status": status, "num-nodes": self.num_nodes, "rounds": self.rounds}
        if error:
            history["error"] = error
        write_json(self.path, history)
