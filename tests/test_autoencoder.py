"""`python -m autoencoder` on a run folder written through the run folder's own
module (a small autoencoder trained here for two epochs on 6,000 real MNIST images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import run_folder as rf
from autoencoder.__main__ import main as codec
from autoencoder.anomaly import roc_auc
from run_folder import RunFolder
from task.config import Settings
from task.data import Batchable
from task.models import build_model
from task.training import train

AE = {
    "model": "autoencoder",
    "ae-hidden": "128",
    "ae-code-size": 16,
    "optimizer": "adam",
    "learning-rate": 0.002,
    "batch-size": 50,
    "device": "cpu",
}


def write_run(folder: Path, config: dict, model: torch.nn.Module, status: str = rf.COMPLETED) -> Path:
    run = RunFolder.create(folder.parent, folder.name, config["model"])
    run.write_config({**Settings.from_run_config(config).to_run_config(), "num-partitions": 1})
    run.write_history(status, [{"round": 0, "server": {}}], num_nodes=1)
    run.write_model(model.state_dict())
    return run.path


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, mnist) -> Path:
    settings = Settings.from_run_config(AE)
    model = build_model(settings)
    data = Batchable.from_uint8(mnist.train_images[:6000], mnist.train_labels[:6000])
    train(model, data, settings, torch.device("cpu"), seed=0, epochs=2)
    return write_run(tmp_path_factory.mktemp("runs") / "ae", AE, model)


def test_encode_then_decode_round_trips_the_test_set(ae_run, mnist, capsys):
    assert codec(["encode", str(ae_run)]) == 0
    codes = np.load(ae_run / "codes.npy")
    assert codes.shape == (10000, 16) and codes.dtype == np.float32
    assert codec(["decode", str(ae_run), str(ae_run / "codes.npy"), "--png", str(ae_run / "decoded.png")]) == 0
    images = np.load(ae_run / "decoded.npy")
    assert images.shape == (10000, 28, 28) and images.min() >= 0 and images.max() <= 1
    # decode(encode(x)) is the model's reconstruction, and close to the digits
    x = mnist.test_images.astype(np.float32) / 255
    assert np.mean((images - x) ** 2) < 0.04
    assert (ae_run / "decoded.png").read_bytes()[:4] == b"\x89PNG"
    assert "Encoded 10000 image(s)" in capsys.readouterr().out


def test_user_images_as_npy_and_png(ae_run, mnist, tmp_path):
    np.save(tmp_path / "three.npy", mnist.test_images[:3])  # uint8 [3, 28, 28]
    assert codec(["encode", str(ae_run), "--input", str(tmp_path / "three.npy"), "--out", str(tmp_path / "c.npy")]) == 0
    assert np.load(tmp_path / "c.npy").shape == (3, 16)
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    assert codec(["encode", str(ae_run), "--input", str(tmp_path / "digit.png"), "--out", str(tmp_path / "p.npy")]) == 0
    assert np.allclose(np.load(tmp_path / "p.npy"), np.load(tmp_path / "c.npy")[:1], atol=1e-5)


def test_grid_writes_a_picture(ae_run, tmp_path):
    assert codec(["grid", str(ae_run), "--count", "12", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size[0] > 500


def test_anomaly_scores_rank_blank_and_noise_above_clean_digits(ae_run, tmp_path, mnist, capsys):
    np.save(tmp_path / "odd.npy", np.stack([mnist.test_images[0], np.full((28, 28), 128, np.uint8)]))
    assert codec(["anomaly", str(ae_run), "--count", "500", "--input", str(tmp_path / "odd.npy")]) == 0
    result = json.loads((ae_run / "anomaly.json").read_text())
    assert result["corruptions"]["blank"]["roc-auc"] > 0.95
    assert result["corruptions"]["noise"]["roc-auc"] > 0.95
    digit, blank = result["input"]["scores"]
    assert blank > result["input"]["threshold"] > digit
    out = capsys.readouterr().out
    assert "image 1: score" in out and out.count("ANOMALY") == 1


def test_roc_auc():
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert roc_auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 27, 27), np.uint8), "has shape (2, 27, 27): MNIST images are 28x28"),
        (np.full((2, 784), 255.0, np.float32), "has values from 255 to 255: float pixels must lie in [0, 1]"),
        (np.zeros((0, 784), np.float32), "has shape (0, 784)"),
    ],
)
def test_bad_images_are_refused_with_the_reason(ae_run, tmp_path, capsys, array, message):
    np.save(tmp_path / "bad.npy", array)
    assert codec(["encode", str(ae_run), "--input", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "c.npy")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c.npy").exists()


def test_codes_of_the_wrong_width_are_refused(ae_run, tmp_path, capsys):
    np.save(tmp_path / "codes.npy", np.zeros((4, 30), np.float32))
    assert codec(["decode", str(ae_run), str(tmp_path / "codes.npy")]) == 2
    assert "this model decodes [N, 16] codes" in capsys.readouterr().err


def test_an_mlp_run_is_refused(tmp_path, capsys):
    run = write_run(tmp_path / "mlp", {"model": "mlp"}, build_model(Settings()))
    assert codec(["grid", str(run)]) == 2
    err = capsys.readouterr().err
    assert "trained the 'mlp' model, not the autoencoder" in err and "Traceback" not in err


def test_a_model_from_another_architecture_is_refused(tmp_path, capsys):
    other = build_model(Settings.from_run_config({**AE, "ae-code-size": 8}))
    run = write_run(tmp_path / "ae", AE, other)
    assert codec(["encode", str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        "does not match config.json" in err
        and "encoder.2.weight: expected (16, 128), found (8, 128)" in err
        and "Traceback" not in err
    )


def test_an_unfinished_run_is_refused(tmp_path, capsys):
    run = write_run(tmp_path / "ae", AE, build_model(Settings.from_run_config(AE)), status=rf.RUNNING)
    assert codec(["encode", str(run)]) == 2
    assert "is still in progress" in capsys.readouterr().err
