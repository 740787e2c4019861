"""FedAvg in one process: the project's own data, shards, model and training code,
with the averaging done in a plain loop instead of Flower messages.

Used to search configurations quickly (no Ray, no SuperLink); every result that
RESULTS.md says which of its figures come from here and which from real Flower runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from task.config import Settings
from task.models import build_model
from task.shards import load_node_data, server_test_set
from task.training import evaluate, get_weights, set_weights, train_round

# A server-side update: (round, global weights, their weighted average over the round's
# nodes) -> the new global weights. None: FedAvg's own (the average is the new model).
ServerUpdate = Callable[[int, list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


def fedavg(
    settings: Settings, num_nodes: int = 100, server_update: ServerUpdate | None = None, stop_at_target: bool = False
) -> dict:
    """Run ``settings.num_server_rounds`` rounds (or until the objective's target when
    ``stop_at_target``); return the objective's test metric by round and the first round
    that reaches its target (None if never or none)."""
    torch.set_num_threads(1)
    device = torch.device("cpu")
    nodes = [load_node_data(settings, i, num_nodes) for i in range(num_nodes)]
    test = server_test_set(settings)
    model = build_model(settings)
    weights = get_weights(model)
    rng = np.random.default_rng(settings.seed)
    per_round = max(1, int(num_nodes * settings.fraction_train))
    objective = settings.objective
    key = objective.key
    values, first_hit, started = [], None, time.monotonic()
    for rnd in range(1, settings.num_server_rounds + 1):
        chosen = rng.choice(num_nodes, per_round, replace=False)
        total = sum(len(nodes[i].train) for i in chosen)
        merged = [np.zeros_like(w) for w in weights]
        for i in chosen:
            set_weights(model, weights)
            train_round(model, nodes[i].train, settings, device, rnd * 1000 + int(i), rnd)
            for acc, w in zip(merged, get_weights(model)):
                acc += w * (len(nodes[i].train) / total)
        weights = (
            merged if server_update is None else [w.astype(np.float32) for w in server_update(rnd, weights, merged)]
        )
        set_weights(model, weights)
        values.append(evaluate(model, test, device, objective)[key])
        print(f"  round {rnd}: {key} {values[-1]:.5f}", file=sys.stderr, flush=True)
        if first_hit is None and objective.reached(values[-1]):
            first_hit = rnd
            if stop_at_target:
                break
    return {"metric": key, "by-round": values, "rounds-to-target": first_hit, "seconds": time.monotonic() - started}
