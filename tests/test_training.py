"""Local training and evaluation: the objective's loss, seeded shuffling, devices, weights."""

import numpy as np
import pytest
import torch

from task.config import Settings
from task.data import Batchable
from task.errors import ConfigError
from task.models import build_model
from task.objective import CLASSIFICATION, RECONSTRUCTION
from task.training import evaluate, get_weights, pick_device, set_weights, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shard(mnist) -> Batchable:
    return Batchable.from_uint8(mnist.train_images[:600], mnist.train_labels[:600])


def test_training_the_classifier_lowers_its_loss_and_raises_accuracy(shard):
    settings = Settings(local_epochs=2, device="cpu")
    model = build_model(settings)
    before = evaluate(model, shard, CPU, CLASSIFICATION)
    train(model, shard, settings, CPU, seed=0)
    after = evaluate(model, shard, CPU, CLASSIFICATION)
    assert after["loss"] < before["loss"] and after["accuracy"] > before["accuracy"] + 0.5


def test_training_the_autoencoder_lowers_its_mse(shard):
    settings = Settings.from_run_config(
        {
            "model": "autoencoder",
            "optimizer": "adam",
            "learning-rate": 0.001,
            "local-epochs": 2,
            "ae-hidden": "64",
            "ae-code-size": 8,
        }
    )
    model = build_model(settings)
    before = evaluate(model, shard, CPU, RECONSTRUCTION)
    train(model, shard, settings, CPU, seed=0)
    after = evaluate(model, shard, CPU, RECONSTRUCTION)
    assert set(after) == {"loss", "mse"} and after["mse"] == after["loss"] < 0.7 * before["mse"]


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(shard):
    settings = Settings(local_epochs=1)
    runs = []
    for seed in (1, 1, 2):
        model = build_model(settings)
        train(model, shard, settings, CPU, seed=seed)
        runs.append(get_weights(model))
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_evaluate_in_batches_equals_evaluate_at_once(shard):
    model = build_model(Settings())
    whole = evaluate(model, shard, CPU, CLASSIFICATION, batch_size=600)
    batched = evaluate(model, shard, CPU, CLASSIFICATION, batch_size=7)
    assert batched["accuracy"] == whole["accuracy"] and batched["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_set_weights_refuses_the_wrong_number_of_arrays():
    model = build_model(Settings())
    with pytest.raises(ValueError, match="Expected 6 arrays for MLP, got 5"):
        set_weights(model, get_weights(model)[:5])


def test_cuda_asked_for_without_a_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="device='cuda' but this process sees no CUDA GPU"):
        pick_device("cuda")


def test_the_proximal_term_keeps_a_node_near_the_model_it_was_sent(shard):
    settings = Settings(local_epochs=2, learning_rate=0.1)
    distances = {}
    for mu in (0.0, 1.0):
        model = build_model(settings)
        start = [p.detach().clone() for p in model.parameters()]
        train(model, shard, settings, CPU, seed=0, proximal_mu=mu)
        distances[mu] = sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start))
    assert distances[1.0] < 0.5 * distances[0.0]


def test_the_nodes_learning_rate_decays_round_by_round(shard):
    """One plain SGD step on the whole shard: the step in round 3 at decay 0.5 is a quarter of round 1's."""
    from task.training import train_round

    settings = Settings(learning_rate=0.1, learning_rate_decay=0.5, local_epochs=1, batch_size=600, device="cpu")
    assert [settings.learning_rate_at(r) for r in (1, 2, 3)] == [0.1, 0.05, 0.025]
    start = get_weights(build_model(settings))
    steps = {}
    for server_round in (1, 3):
        model = build_model(settings)
        set_weights(model, start)
        train_round(model, shard, settings, CPU, seed=0, server_round=server_round)
        steps[server_round] = [after - before for after, before in zip(get_weights(model), start)]
    for first, third in zip(steps[1], steps[3]):
        np.testing.assert_allclose(third, first / 4, rtol=1e-4, atol=1e-7)
