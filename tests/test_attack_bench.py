"""The attack benchmark's pieces: who attacks in each round, and the in-process loopback rounds."""

import pytest

from benchmarks.attacks import attack_items, cell, pivot
from benchmarks.loopback import run_rounds
from server_app.sampling import sample_partitions
from task.config import Settings


@pytest.fixture(autouse=True)
def _faults_allowed(monkeypatch):
    monkeypatch.setenv("FEDMNIST_ALLOW_FAULTS", "1")


def test_the_first_attackers_of_every_rounds_sample_attack_in_that_round_only():
    settings = Settings.from_run_config({"fraction-train": 0.1, "num-server-rounds": 4})
    items = attack_items("scale=20", 3, settings).split()
    assert len(items) == 4
    for rnd, item in enumerate(items, start=1):
        sample = sample_partitions(list(range(100)), 0.1, 1, settings.seed, rnd, 0, "train")
        assert item == f"scale=20@{','.join(map(str, sample[:3]))}:{rnd}"
    assert attack_items(None, 3, settings) == "" and attack_items("signflip", 0, settings) == ""


def test_a_defense_that_cannot_take_the_share_is_reported_not_run():
    row = cell("iid", 2, "signflip", 0.3, "bulyan")  # 3 of 10 malicious: Bulyan needs 4 x 3 + 3 replies
    assert row["final"] is None and row["why-not"] == "needs 15 replies a round, 10 sampled"
    assert "| n/a |" in pivot([row])


def test_loopback_rounds_run_the_real_clientapp_and_the_servers_checks():
    knobs = {"fraction-train": 1.0, "fraction-evaluate": 0.0, "local-epochs": 1, "num-server-rounds": 1}
    attacked = run_rounds({**knobs, "update-screen": 3.0, "fault-injection": "scale=20@3 count=7@5"}, 10)
    reasons = {f["partition-id"]: f["reason"] for f in attacked["failures"]}
    assert set(reasons) == {3, 5}
    assert "more than update-screen=3 x the round's median" in reasons[3]
    assert reasons[5] == "num-examples=7, but partition 5's shard holds 6000 images"
    assert attacked["by-round"][0] > 0.85  # the eight honest nodes' mean
