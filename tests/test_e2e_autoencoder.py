"""The autoencoder through the same ServerApp and ClientApp, in a real simulation,
and the autoencoder commands on the run folder it leaves."""

import json

import pytest
import torch

import run_folder as rf
from autoencoder.__main__ import main as codec
from launcher.simulate import run_simulation
from task.shards import server_test_set
from task.training import evaluate

pytestmark = pytest.mark.slow


def test_one_federated_round_lowers_the_test_mse_and_model_pt_reproduces_it(tmp_path):
    run_dir = run_simulation(
        {
            "model": "autoencoder",
            "optimizer": "adam",
            "learning-rate": 0.001,
            "batch-size": 50,
            "num-server-rounds": 1,
            "fraction-train": 1.0,
            "local-epochs": 1,
            "run-name": "ae",
        },
        num_supernodes=4,
        output_dir=tmp_path,
        echo=False,
    )
    run = rf.read_completed_run(run_dir)
    history = run.history
    before, after = (r["server"]["mse"] for r in history["rounds"])
    assert after < 0.6 * before
    assert history["rounds"][1]["clients-train"]["nodes"] == 4

    settings = run.settings
    mse = evaluate(run.model, server_test_set(settings), torch.device("cpu"), settings.objective)["mse"]
    assert mse == pytest.approx(after, rel=1e-5)

    assert codec(["grid", str(run_dir)]) == 0
    assert run.folder.file(rf.RECONSTRUCTIONS).stat().st_size > 10_000
    assert codec(["anomaly", str(run_dir), "--count", "300"]) == 0
    assert json.loads(run.folder.file(rf.ANOMALY).read_text())["corruptions"]["blank"]["roc-auc"] > 0.9
