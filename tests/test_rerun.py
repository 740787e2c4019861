"""Rerunning a run folder from its manifest: the comparison, and (slow) a real rerun."""

import pytest

import run_folder as rf
from launcher.rerun import compare_histories, main
from launcher.simulate import run_simulation


def _rounds(*accuracies):
    return [
        {"round": i, "server": {"accuracy": a, "loss": 1.0}, "wall-time-s": float(i), "failures": []}
        for i, a in enumerate(accuracies)
    ]


def test_identical_histories_match_whatever_the_wall_times():
    old, new = _rounds(0.1, 0.9), _rounds(0.1, 0.9)
    new[1]["wall-time-s"] = 99.0
    assert compare_histories(old, new) == (6, [])


def test_each_difference_is_named():
    _compared, differences = compare_histories(_rounds(0.1, 0.9), _rounds(0.1, 0.91, 0.95))
    assert differences == ["2 rounds before, 3 now", "round 1 server accuracy: 0.9 before, 0.91 now"]


@pytest.mark.slow
def test_a_completed_cpu_run_reruns_to_a_match(tmp_path, capsys):
    run_dir = run_simulation(
        {"num-server-rounds": 2, "local-epochs": 1, "fraction-train": 0.5, "run-name": "orig"},
        num_supernodes=4,
        output_dir=tmp_path,
        echo=False,
    )
    assert main([str(run_dir), "--output-dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "Match: all" in out and "model.pt is byte-identical" in out
    (rerun_dir,) = (tmp_path / "again").iterdir()
    assert rf.RunFolder(rerun_dir).config()["seed"] == 42


def test_a_folder_without_manifest_is_refused_in_one_line(tmp_path, capsys):
    folder = rf.RunFolder.create(tmp_path, "old", "mlp")
    folder.write_config({"model": "mlp"})
    assert main([str(folder.path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
