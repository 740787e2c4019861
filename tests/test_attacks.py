"""Attacks injected through ``fault-injection``: each does exactly what it says, only
where and when it is told to, and only where faults are allowed."""

from __future__ import annotations

import numpy as np
import pytest

import client_app.app as client_module
from client_app.app import MnistClient
from task import attacks
from task.config import Settings
from task.errors import ConfigError
from task.faults import SYNTAX, Fault, faults_for, misbehave, parse_faults
from task.models import build_model
from task.shards import load_node_data
from task.training import get_weights

G = [np.array([1.0, 2.0, -4.0], dtype=np.float32), np.array([[0.5]], dtype=np.float32)]
T = [np.array([2.0, 2.0, -3.0], dtype=np.float32), np.array([[0.25]], dtype=np.float32)]


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.setenv("FEDMNIST_ALLOW_FAULTS", "1")


def _reply(text: str, seed: int = 0) -> tuple[list[np.ndarray], int]:
    return misbehave(parse_faults(text), G, T, 600, seed, round_timeout=1.0)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))


# ---- the arithmetic, to the bit, on small arrays ----


def test_scale_sends_the_update_times_k(allowed):
    weights, count = _reply("scale=20@0")
    assert _same(weights, [np.array([21.0, 2.0, 16.0], np.float32), np.array([[-4.5]], np.float32)])
    assert count == 600


def test_signflip_sends_the_update_negated(allowed):
    weights, count = _reply("signflip@0")
    assert _same(weights, [np.array([0.0, 2.0, -5.0], np.float32), np.array([[0.75]], np.float32)])
    assert count == 600


def test_noise_adds_seeded_gaussian_noise_of_the_given_sigma(allowed):
    trained = [np.zeros(200_000, np.float32), np.ones((10, 10), np.float32)]
    (noisy, _), (again, _), (other, _) = (
        misbehave(parse_faults("noise=0.5@0"), trained, trained, 600, seed, round_timeout=1.0) for seed in (7, 7, 8)
    )
    assert _same(noisy, again) and not _same(noisy, other)  # reruns send the same noise, other nodes/rounds not
    assert noisy[0].dtype == np.float32 and noisy[1].shape == (10, 10)
    assert abs(noisy[0].std() - 0.5) < 0.005 and abs(noisy[0].mean()) < 0.005
    assert not np.array_equal(noisy[1], trained[1])  # every array gets noise


def test_labelflip_maps_every_digit_to_another_fixed_one(allowed):
    labels = np.arange(10)
    assert attacks.flipped_labels(labels).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert sorted(attacks.flipped_labels(labels)) == list(range(10))  # a permutation
    assert not np.any(attacks.flipped_labels(labels) == labels)  # no digit keeps its label
    weights, count = _reply("labelflip@0")
    assert weights is T and count == 600  # the weights it trained on those labels are sent as they are


def test_count_claims_n_examples_with_honest_weights(allowed):
    weights, count = _reply("count=1e9@0")
    assert count == 1_000_000_000 and type(count) is int
    assert _same(weights, T)


def test_collude_sends_minus_k_times_the_global_model_whatever_was_trained(allowed):
    weights, _ = _reply("collude=2@0")
    assert _same(weights, [np.array([-1.0, -2.0, 4.0], np.float32), np.array([[-0.5]], np.float32)])
    other, _ = misbehave(parse_faults("collude=2@0"), G, [t * 3 for t in T], 600, 99, round_timeout=1.0)
    assert _same(weights, other)


def test_items_for_the_same_node_and_round_apply_in_order(allowed):
    weights, count = _reply("signflip@0 scale=2@0 count=5@0")  # G - 2 (T - G) with 5 examples claimed
    assert _same(weights, [np.array([-1.0, 2.0, -6.0], np.float32), np.array([[1.0]], np.float32)])
    assert count == 5


# ---- the syntax: which partitions, which rounds ----


def test_the_existing_forms_mean_what_they_meant(allowed):
    assert parse_faults("nan@1 hang@2:3") == [Fault("nan", (1,), None), Fault("hang", (2,), 3)]
    assert [f.kind for f in faults_for("nan@1 hang@2:3", 1, 7)] == ["nan"]
    assert [f.kind for f in faults_for("nan@1 hang@2:3", 2, 3)] == ["hang"]
    assert faults_for("nan@1 hang@2:3", 2, 4) == [] and faults_for("nan@1 hang@2:3", 0, 3) == []


def test_an_item_can_name_several_partitions_from_a_round_on(allowed):
    (fault,) = parse_faults("scale=20@3,7:2+")
    assert fault == Fault("scale", (3, 7), 2, later_rounds=True, value=20.0)
    hit = {(p, r) for p in range(9) for r in range(1, 6) if faults_for("scale=20@3,7:2+", p, r)}
    assert hit == {(p, r) for p in (3, 7) for r in (2, 3, 4, 5)}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("scale@1", "give scale=K"),
        ("count@1", "give count=N"),
        ("nan=2@1", "'nan' takes no value"),
        ("noise=0@1", "noise takes SIGMA, a number > 0, not '0'"),
        ("noise=-1@1", "noise takes SIGMA, a number > 0"),
        ("count=1.5@1", "count takes N, a whole number, not '1.5'"),
        ("scale=inf@1", "scale takes K, a number, not 'inf'"),
        ("collude=two@1", "collude takes K, a number, not 'two'"),
        ("flip@1", "with KIND one of raise, hang, nan, shape, signflip, scale, noise, labelflip, count, collude"),
        ("scale=20@", "is not KIND"),
        ("nan@1:2-", "is not KIND"),
        ("nan@1,,2", "is not KIND"),
        ("nan@a", "is not KIND"),
        ("nan", "is not KIND"),
    ],
)
def test_a_bad_item_is_named_with_the_syntax(allowed, item, expected):
    with pytest.raises(ConfigError) as err:
        parse_faults(f"nan@0 {item}")
    assert f"fault-injection item '{item}'" in str(err.value) and expected in str(err.value)
    assert SYNTAX in str(err.value)


# ---- refused where not allowed ----


@pytest.mark.parametrize("text", ["signflip@1", "scale=20@3,7:2+", "noise=0.1@0", "labelflip@2", "count=1e9@3"])
def test_attacks_are_refused_without_the_environment_switch(monkeypatch, text):
    monkeypatch.delenv("FEDMNIST_ALLOW_FAULTS", raising=False)
    with pytest.raises(ConfigError, match="is for tests only"):
        Settings.from_run_config({"fault-injection": text})
    with pytest.raises(ConfigError, match="FEDMNIST_ALLOW_FAULTS=1"):  # a node asked directly refuses too
        faults_for(text, 1, 1)
    monkeypatch.setenv("FEDMNIST_ALLOW_FAULTS", "yes")  # only "1" enables them
    with pytest.raises(ConfigError, match="is for tests only"):
        Settings.from_run_config({"fault-injection": text})


def test_labelflip_is_refused_for_the_autoencoder(allowed):
    with pytest.raises(ConfigError, match="model='autoencoder' trains on no labels"):
        Settings.from_run_config({"model": "autoencoder", "fault-injection": "nan@0 labelflip@1"})
    Settings.from_run_config({"model": "autoencoder", "fault-injection": "scale=20@1"})
    Settings.from_run_config({"model": "mlp", "fault-injection": "labelflip@1"})


# ---- on a real node: what it trains on, what it sends ----


def _client(text: str, partition_id: int) -> MnistClient:
    settings = Settings.from_run_config({"local-epochs": 1, "device": "cpu", "fault-injection": text})
    data = load_node_data(settings, partition_id=partition_id, num_partitions=100)
    return MnistClient(settings, data, partition_id=partition_id, num_partitions=100)


def test_a_label_flipping_node_trains_on_permuted_labels_in_its_rounds_only(allowed, monkeypatch):
    seen = {}

    def record(model, data, settings, device, seed, server_round):
        seen[server_round] = data.y.numpy().copy()
        return 0.0

    monkeypatch.setattr(client_module, "train_round", record)
    client = _client("labelflip@3:2+", 3)
    own = client.data.train.y.numpy().copy()
    start = get_weights(build_model(client.settings))
    for server_round in (1, 2, 3):
        client.fit(start, {"server-round": server_round})
    assert np.array_equal(seen[1], own)
    assert np.array_equal(seen[2], 9 - own) and np.array_equal(seen[3], 9 - own)
    assert np.array_equal(client.data.train.y.numpy(), own)  # the shard itself is left alone


def test_colluding_nodes_send_byte_identical_weights_from_different_trainings(allowed):
    start = get_weights(build_model(Settings()))
    honest = [_client("", p).fit(start, {"server-round": 1})[0] for p in (3, 7)]
    assert not _same(*honest)  # different shards train different models
    sent = [_client("collude=0.5@3,7", p).fit(start, {"server-round": 1}) for p in (3, 7)]
    (a, count_a, _), (b, count_b, _) = sent
    assert _same(a, b) and _same(a, attacks.colluding(start, 0.5))
    assert count_a == count_b == 600  # honest counts


def test_a_noisy_node_adds_the_same_noise_on_every_rerun(allowed):
    start = get_weights(build_model(Settings()))
    honest, _, _ = _client("", 3).fit(start, {"server-round": 1})
    noisy, _, _ = _client("noise=0.01@3", 3).fit(start, {"server-round": 1})
    again, _, _ = _client("noise=0.01@3", 3).fit(start, {"server-round": 1})
    assert _same(noisy, again)
    diff = np.concatenate([(n - h).ravel() for n, h in zip(noisy, honest)])
    assert abs(diff.std() - 0.01) < 0.0005
