"""The report: run-folder checks, the central baseline cache, local vs merged, report.md.

The fast tests use run folders written here the way the ServerApp writes them
(tiny iid-balanced shards, so the baselines train in a second); the slow test
reports on a real `flwr run` simulation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import run_folder as rf
from launcher.simulate import main as simulate_cli
from report import ReportError, make_report
from report.__main__ import main as report_cli
from report.central import central_baseline
from report.figures import label_heatmap_png
from report.local_vs_merged import OWN_DISTRIBUTION, OWN_SHARD, compare_local_and_merged, sample_nodes
from report.markdown import first_at_target
from run_folder import RunFolder, RunFolderError
from task.config import Settings
from task.models import build_model
from task.shards import load_node_data, local_test_shards, server_test_set
from task.training import evaluate, train

REPORT_FILE, CURVES_FILE, LOCAL_FILE, RECON_FILE = (
    rf.REPORT,
    rf.REPORT_CURVES,
    rf.REPORT_LOCAL_VS_MERGED,
    rf.REPORT_RECONSTRUCTIONS,
)

# 4 nodes x 20 images of each digit = 800 training images in all: seconds on a CPU.
TINY = {
    "partitioning": "iid-balanced",
    "samples-per-class": 20,
    "local-epochs": 1,
    "batch-size": 20,
    "central-epochs": 2,
    "device": "cpu",
}
NODES = 4


def fake_run(root: Path, name: str = "run", status: str = "completed", **knobs) -> Path:
    """A run folder as the ServerApp leaves it: one FedAvg round done by hand on node 0's shard."""
    settings = Settings.from_run_config({**TINY, **knobs})
    objective = settings.objective
    model = build_model(settings)
    cpu = torch.device("cpu")
    rounds = [
        {"round": 0, "server": evaluate(model, _test(settings), cpu, objective), "elapsed-s": 0.0, "wall-time-s": 0.0}
    ]
    train(model, load_node_data(settings, 0, NODES).train, settings, cpu, seed=1)
    rounds.append(
        {
            "round": 1,
            "server": evaluate(model, _test(settings), cpu, objective),
            "elapsed-s": 1.5,
            "wall-time-s": 1.5,
            "clients-train": {"train-loss": 0.5, "nodes": 1, "num-examples": 200},
        }
    )
    folder = RunFolder.create(root, name, settings.model)
    folder.write_config(
        {
            **settings.to_run_config(),
            "num-server-rounds": knobs.get("num-server-rounds", 1),
            "run-id": 7,
            "num-partitions": NODES,
        }
    )
    folder.write_history(status, rounds, num_nodes=NODES)
    folder.write_model(model.state_dict())
    return folder.path


def _test(settings):
    from task.shards import server_test_set

    return server_test_set(settings)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_report_has_every_section_with_the_runs_numbers(tmp_path):
    run_dir = fake_run(tmp_path)
    path = make_report(run_dir, nodes=2, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert path == run_dir / REPORT_FILE
    text = path.read_text()
    for heading in (
        "## Headline",
        "## Per round and per epoch",
        "## Local against merged",
        "## Configuration",
        "## Where the numbers come from",
    ):
        assert heading in text
    history = json.loads((run_dir / "history.json").read_text())
    final = history["rounds"][-1]["server"]["accuracy"]
    assert f"| final test accuracy | {100 * final:.2f}% |" in text
    assert (run_dir / CURVES_FILE).read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / LOCAL_FILE).read_bytes()[:4] == b"\x89PNG"
    assert not (run_dir / RECON_FILE).exists()  # only for the autoencoder


def test_central_baseline_is_cached_by_configuration(tmp_path):
    settings = Settings.from_run_config(TINY)
    cache, lines = tmp_path / "cache", []
    first = central_baseline(settings, NODES, torch.device("cpu"), cache, lines.append)
    second = central_baseline(settings, NODES, torch.device("cpu"), cache, lines.append)
    assert not first.cached and second.cached
    assert second.epochs == first.epochs and len(first.epochs) == 3  # epoch 0 + 2 epochs
    assert first.train_images == NODES * 10 * 20  # the union of the nodes' shards
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert any("reusing" in line for line in lines)
    # another learning rate is another baseline
    other = central_baseline(
        Settings.from_run_config({**TINY, "learning-rate": 0.05}), NODES, torch.device("cpu"), cache
    )
    assert not other.cached and other.folder != first.folder


def test_central_baseline_learns(tmp_path):
    result = central_baseline(Settings.from_run_config(TINY), NODES, torch.device("cpu"), tmp_path, lambda _: None)
    accuracy = [e["accuracy"] for e in result.epochs]
    assert accuracy[0] < 0.3 and accuracy[-1] > 0.7


def test_local_vs_merged_uses_each_nodes_held_out_images(tmp_path):
    settings = Settings.from_run_config(TINY)
    merged = build_model(settings)
    train(merged, load_node_data(settings, 1, NODES).train, settings, torch.device("cpu"), seed=3)
    result = compare_local_and_merged(
        settings, NODES, merged.state_dict(), 2, torch.device("cpu"), nodes=3, log=lambda _: None
    )
    shards = local_test_shards(settings, NODES)
    assert [r.node for r in result.rows] == sample_nodes(NODES, 3, settings.seed)
    for row in result.rows:
        data = load_node_data(settings, row.node, NODES)
        assert row.test_images == len(shards[row.node]) == len(data.test)
        assert row.merged == evaluate(merged, data.test, torch.device("cpu"), settings.objective)
    assert result.epochs == 2
    assert result.mean("merged") == pytest.approx(np.mean([r.merged["accuracy"] for r in result.rows]))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "history.json").unlink(), "has no history.json: the run never started"),
        (lambda d: (d / "model.pt").unlink(), "model.pt is missing"),
        (lambda d: (d / "model.pt").write_bytes(b"not a model"), "cannot be loaded"),
        (lambda d: (d / "config.json").write_text("{"), "config.json is unreadable"),
    ],
)
def test_a_broken_run_folder_is_refused_and_left_as_it_was(tmp_path, breakage, message):
    run_dir = fake_run(tmp_path)
    breakage(run_dir)
    before = _snapshot(run_dir)
    with pytest.raises(RunFolderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_report(run_dir, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert _snapshot(run_dir) == before


def test_the_shards_follow_the_nodes_num_partitions_not_the_node_count(tmp_path):
    folder = RunFolder(fake_run(tmp_path))
    folder.write_config({**folder.config(), "num-partitions": 40})
    folder.write_history(rf.COMPLETED, folder.history()["rounds"], num_nodes=2)
    assert rf.read_completed_run(folder.path).num_partitions == 40


def test_a_run_in_progress_is_refused(tmp_path):
    run_dir = fake_run(tmp_path, status="running")
    with pytest.raises(RunFolderError, match="still in progress"):
        make_report(run_dir, cache_dir=tmp_path / "cache")


def test_a_model_that_does_not_match_the_config_is_refused(tmp_path):
    run_dir = fake_run(tmp_path)
    ae = build_model(Settings(model="autoencoder"))
    torch.save(ae.state_dict(), run_dir / "model.pt")
    with pytest.raises(RunFolderError, match="does not match config.json"):
        make_report(run_dir, cache_dir=tmp_path / "cache")


def test_cli_prints_one_line_errors(tmp_path, capsys):
    assert report_cli([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a folder" in err and "Traceback" not in err


def test_an_earlier_report_survives_a_failed_one(tmp_path, monkeypatch):
    run_dir = fake_run(tmp_path)
    make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None)
    before = _snapshot(run_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("report.build.local_vs_merged_png", broken)
    with pytest.raises(RuntimeError):
        make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert _snapshot(run_dir) == before


def test_autoencoder_report_shows_reconstructions_and_pca(tmp_path):
    run_dir = fake_run(
        tmp_path,
        model="autoencoder",
        optimizer="adam",
        **{"learning-rate": 0.001, "ae-hidden": "64", "ae-code-size": 8},
    )
    text = make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert "| final test MSE per pixel |" in text and "PCA with 8 components" in text
    # every table says its unit
    assert "| federated MSE per pixel |" in text and "| central MSE per pixel |" in text
    assert "| local MSE per pixel, own test shard | merged MSE per pixel, own test shard |" in text
    assert (run_dir / RECON_FILE).read_bytes()[:4] == b"\x89PNG"
    assert "pretrained" not in text


def test_autoencoder_report_says_when_the_run_was_pretrained_and_the_baseline_was_not(tmp_path):
    knobs = {
        "learning-rate": 0.001,
        "ae-hidden": "64",
        "ae-code-size": 8,
        "ae-pretrain-rounds": 2,
        "num-server-rounds": 5,
    }
    run_dir = fake_run(tmp_path, model="autoencoder", optimizer="adam", **knobs)
    text = make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert "pretrained its autoencoder layer by layer (2 rounds per encoder/decoder pair, rounds 1-4)" in text


@pytest.mark.slow
def test_report_at_the_end_of_a_real_simulation(tmp_path, monkeypatch, capsys):
    """What `make run` does, on 3 clients: the launcher runs Flower, then the report."""
    monkeypatch.setenv("FEDMNIST_CACHE_DIR", str(tmp_path / "cache"))
    code = simulate_cli(
        [
            "--num-supernodes",
            "3",
            "--output-dir",
            str(tmp_path),
            "--run-config",
            "num-server-rounds=1 fraction-train=1.0 local-epochs=1 central-epochs=1 run-name='tiny'",
            "--report",
        ]
    )
    assert code == 0
    run_dir = tmp_path / "tiny"
    assert f"Report: {run_dir / REPORT_FILE}" in capsys.readouterr().out
    text = (run_dir / REPORT_FILE).read_text()
    history = RunFolder(run_dir).history()
    for entry in history["rounds"]:
        assert f"| {entry['round']} | {100 * entry['server']['accuracy']:.2f}% |" in text
    assert "1 rounds x 1 local epoch(s)" in text and "1 epoch(s) on 60,000 images" in text
    assert "for 1 epoch(s) = local-epochs" in text
    assert "| **mean** |" in text and "over 3 nodes" in text
    assert list((tmp_path / "cache" / "central").iterdir())  # the baseline went to the cache


@pytest.mark.parametrize("option, message", [({"central_epochs": 0}, "central epochs=0"), ({"nodes": 0}, "nodes=0")])
def test_bad_report_options_are_refused(tmp_path, option, message):
    with pytest.raises(ReportError, match=message):
        make_report(tmp_path, **option)


# McMahan's pathological split at its smallest: 200 label-sorted shards of 300, one per node,
# so each of the 4 nodes holds 300 images of (mostly) one digit.
NON_IID = {"partitioning": "shards", "num-shards": 200, "shards-per-client": 1}


def _tiny_central(monkeypatch, tmp_path):
    """The report's central baseline on the tiny IID shards (seconds), whatever the run's partitioning."""
    import report.build

    tiny = central_baseline(
        Settings.from_run_config(TINY), NODES, torch.device("cpu"), tmp_path / "cache", lambda _: None
    )
    monkeypatch.setattr(report.build, "central_baseline", lambda *args, **kwargs: tiny)


def test_local_vs_merged_on_non_iid_data_tests_each_node_on_its_own_digits(tmp_path):
    settings = Settings.from_run_config({**TINY, **NON_IID})
    merged = build_model(settings)
    result = compare_local_and_merged(
        settings, NODES, merged.state_dict(), 2, torch.device("cpu"), nodes=2, log=lambda _: None
    )
    assert result.test_set == OWN_DISTRIBUTION
    test = server_test_set(settings)
    labels = test.y.numpy()
    cpu = torch.device("cpu")
    for row in result.rows:
        data = load_node_data(settings, row.node, NODES)
        assert row.digits == np.bincount(data.train.y.numpy(), minlength=10).tolist()
        seen = [d for d, n in enumerate(row.digits) if n]
        assert len(seen) <= 2  # one shard of 300 label-sorted images
        # the test images of exactly the node's digits, weighted like its training images
        assert row.test_images == int(np.isin(labels, seen).sum())
        expected = sum(
            row.digits[d]
            / sum(row.digits)
            * evaluate(merged, type(test)(test.x[test.y == d], test.y[test.y == d]), cpu, settings.objective)[
                "accuracy"
            ]
            for d in seen
        )
        assert row.merged["accuracy"] == pytest.approx(expected)
        # a model that saw one digit is right on its own distribution and wrong on most of the test set
        assert row.local["accuracy"] > 0.9 and row.local_all["accuracy"] < 0.3
    assert result.merged_all == evaluate(merged, test, cpu, settings.objective)


def test_local_vs_merged_on_iid_data_keeps_each_nodes_held_out_shard(tmp_path):
    settings = Settings.from_run_config(TINY)
    result = compare_local_and_merged(
        settings, NODES, build_model(settings).state_dict(), 1, torch.device("cpu"), nodes=1, log=lambda _: None
    )
    assert result.test_set == OWN_SHARD
    assert result.rows[0].test_images == len(local_test_shards(settings, NODES)[result.rows[0].node])


def test_non_iid_report_shows_labels_strategy_and_privacy(tmp_path, monkeypatch):
    _tiny_central(monkeypatch, tmp_path)
    knobs = {
        **NON_IID,
        "strategy": "fedavgm",
        "server-momentum": 0.9,
        "dp-clipping-norm": 1.0,
        "dp-noise-multiplier": 0.5,
    }
    run_dir = fake_run(tmp_path, **knobs)
    folder = RunFolder(run_dir)
    rounds = folder.history()["rounds"]
    rounds[1]["clients-train"]["privacy"] = {"epsilon": 12.345, "delta": 1e-5}
    folder.write_history(rf.COMPLETED, rounds, num_nodes=NODES)
    text = make_report(run_dir, nodes=2, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert (
        "trained with FedAvgM with differential privacy over 4 nodes (shards: 200 label-sorted shards, 1 per node)"
        in text
    )
    assert "## Strategy and privacy" in text
    assert "server learning rate 1 (Flower's default), server momentum 0.9" in text
    assert "clipped to L2 norm 1" in text and "noise multiplier 0.5" in text
    assert "epsilon = 12.3 at delta = 1e-05 after 1 rounds" in text and "upper bound" in text
    assert "| | federated (FedAvgM, DP) | central |" in text
    assert "## Label distribution" in text and "![label distribution per node](report-labels.png)" in text
    assert (run_dir / "report-labels.png").read_bytes()[:4] == b"\x89PNG"
    assert "tested on the node's own distribution" in text and "What the gap means: on non-IID data" in text
    assert "| local accuracy, own distribution | merged accuracy, own distribution |" in text


def test_a_pipe_or_line_break_in_the_config_stays_in_its_cell(tmp_path, monkeypatch):
    """config.json comes from the run folder, which anyone may have edited."""
    _tiny_central(monkeypatch, tmp_path)
    folder = RunFolder(fake_run(tmp_path))
    folder.write_config({**folder.config(), "note": "a | b\nc", "odd|key": ""})
    text = make_report(folder.path, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert "| note | `a \\| b c` |\n" in text and '| odd\\|key | `""` |\n' in text


def test_first_at_target_is_the_first_step_that_meets_it():
    mlp, ae = Settings().objective, Settings(model="autoencoder").objective
    assert first_at_target(mlp, [0.5, 0.97, 0.99, 0.98]) == 1  # 97% is the target, and it counts
    assert first_at_target(mlp, [0.5, 0.969]) is None
    assert first_at_target(ae, [0.5, 0.0]) is None  # the autoencoder has no target


def test_default_report_has_no_strategy_section_and_says_fedavg(tmp_path):
    run_dir = fake_run(tmp_path)
    text = make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert "## Strategy and privacy" not in text and "trained with FedAvg over 4 nodes (iid-balanced" in text
    assert "## Label distribution" in text and "What the gap means: on IID data" in text


def test_privacy_without_epsilon_says_why(tmp_path, monkeypatch):
    _tiny_central(monkeypatch, tmp_path)
    run_dir = fake_run(tmp_path, **{"dp-clipping-norm": 1.0, "dp-noise-multiplier": 0.0})
    folder = RunFolder(run_dir)
    rounds = folder.history()["rounds"]
    rounds[1]["clients-train"]["privacy"] = {"epsilon": None, "delta": 1e-5, "why-not": "no noise"}
    folder.write_history(rf.COMPLETED, rounds, num_nodes=NODES)
    text = make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert "not computed (no noise), so no (epsilon, delta) guarantee is claimed" in text
    assert "`DifferentialPrivacyServerSideFixedClipping` around FedAvg" in text and "1 on the server" in text


def test_the_report_says_the_nodes_clipped_under_client_side_clipping(tmp_path, monkeypatch):
    _tiny_central(monkeypatch, tmp_path)
    run_dir = fake_run(tmp_path, **{"dp-clipping-norm": 1.0, "dp-noise-multiplier": 0.0, "dp-clipping": "client"})
    text = make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert "`DifferentialPrivacyClientSideFixedClipping` around FedAvg" in text
    assert "clipped to L2 norm 1 by the node itself before sending it (Flower's `fixedclipping_mod`)" in text


def test_the_label_picture_fails_with_the_rest(tmp_path, monkeypatch):
    run_dir = fake_run(tmp_path)
    before = _snapshot(run_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("report.build.label_heatmap_png", broken)
    with pytest.raises(RuntimeError):
        make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("nodes", [4, 100])
def test_label_heatmap_draws_every_node(nodes):
    counts = np.random.default_rng(0).integers(0, 50, size=(nodes, 10))
    assert label_heatmap_png(counts, "labels", marked=[0, nodes - 1])[:4] == b"\x89PNG"


def test_convergence_is_judged_on_the_training_loss_over_the_last_epochs():
    from report.central import CONVERGED_PATIENCE, converged

    falling = [1.0 * 0.9**i for i in range(20)]  # 10% better every epoch: never converged
    assert not converged(falling)
    flat = [1.0, 0.5, 0.4] + [0.399] * CONVERGED_PATIENCE  # 0.25% better over the last epochs
    assert converged(flat)
    assert not converged([1.0] * CONVERGED_PATIENCE)  # too few epochs to judge


def test_central_converged_trains_on_until_it_stops_learning_and_the_report_shows_it(tmp_path, monkeypatch):
    import report.central as central

    monkeypatch.setattr(central, "CONVERGED_MAX_EPOCHS", 12)
    run_dir = fake_run(tmp_path, **{"central-converged": True})
    lines = []
    text = make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lines.append).read_text()
    settings = Settings.from_run_config({**TINY, "central-converged": True})
    result = central_baseline(settings, NODES, torch.device("cpu"), tmp_path / "cache", until_converged=True)
    assert result.cached  # the report trained it and left it in the cache
    epochs = len(result.epochs) - 1
    assert 2 < epochs <= 12  # beyond central-epochs, and it stopped either converged or at the cap
    losses = [e["train-loss"] for e in result.epochs[1:]]
    assert epochs == 12 or central.converged(losses)
    assert not central.converged(losses[:-1])  # it did not train past the first converged epoch
    final = result.epochs[-1]["accuracy"]
    assert (
        "Central, trained until it stopped learning" in text and f"**{100 * final:.2f}%** after {epochs} epochs" in text
    )
    same_budget = central_baseline(settings, NODES, torch.device("cpu"), tmp_path / "cache")
    assert same_budget.cached and len(same_budget.epochs) == 3 and same_budget.folder != result.folder


def test_the_report_lists_every_refused_reply_with_its_round_node_and_reason(tmp_path, monkeypatch):
    _tiny_central(monkeypatch, tmp_path)
    run_dir = fake_run(tmp_path, **{"strategy": "krum", "num-malicious-nodes": 1, "update-screen": 3.0})
    folder = RunFolder(run_dir)
    rounds = folder.history()["rounds"]
    rounds[1]["failures"] = [
        {
            "round": 1,
            "phase": "train",
            "attempt": 1,
            "partition-id": 3,
            "node": 1003,
            "reason": "num-examples=1000000000, but partition 3's shard holds 600 images",
        },
        {"round": 1, "phase": "train", "attempt": 1, "partition-id": None, "node": None, "reason": "a | b"},
    ]
    folder.write_history(rf.COMPLETED, rounds, num_nodes=NODES)
    text = make_report(run_dir, nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None).read_text()
    assert "## Refused replies" in text and "dropped 2 replies before averaging" in text
    assert "| 1 | train | 1 | 3 | 1003 | num-examples=1000000000, but partition 3's shard holds 600 images |" in text
    assert "| 1 | train | 1 |  |  | a \\| b |" in text
    assert "robust aggregation assuming up to 1 malicious node(s)" in text
    assert "more than 3 times as long as the round's median update is dropped" in text
    clean = make_report(fake_run(tmp_path, name="clean"), nodes=1, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert "## Refused replies" not in clean.read_text()
