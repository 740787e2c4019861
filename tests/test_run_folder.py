"""The run folder: created once, written atomically, read back and checked."""

import json
import math
from pathlib import Path

import pytest
import torch

import run_folder as rf
from run_folder import RunFolder, RunFolderError, default_run_name, read_completed_run, resolve_output_dir
from task.config import Settings
from task.models import build_model


def completed(tmp_path: Path, settings: Settings | None = None, **config) -> RunFolder:
    settings = settings or Settings()
    folder = RunFolder.create(tmp_path, "run", settings.model)
    folder.write_config({**settings.to_run_config(), "num-partitions": 4, **config})
    folder.write_history(rf.COMPLETED, [{"round": 0, "server": {"loss": 2.3, "accuracy": 0.1}}], num_nodes=4)
    folder.write_model(build_model(settings).state_dict())
    return folder


def test_relative_output_dir_is_taken_from_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_output_dir("runs") == tmp_path / "runs"
    assert resolve_output_dir("/abs/runs") == Path("/abs/runs")
    assert resolve_output_dir("~/runs") == tmp_path / "runs"


def test_default_run_names_have_one_format():
    assert default_run_name("mlp").endswith("-mlp") and len(default_run_name("mlp")) == len("20260101-120000-mlp")
    assert default_run_name("mlp", 42).endswith("-mlp-42")


def test_run_folders_are_never_reused(tmp_path):
    first = RunFolder.create(tmp_path, "exp", "mlp", 1)
    first.write_history(rf.COMPLETED, [], num_nodes=2)
    with pytest.raises(RunFolderError, match="never overwritten"):
        RunFolder.create(tmp_path, "exp", "mlp", 2)
    assert first.history()["status"] == "completed"


def test_an_empty_run_name_gives_a_time_stamped_folder(tmp_path):
    folder = RunFolder.create(tmp_path, "", "autoencoder", 9)
    assert folder.path.parent == tmp_path and folder.name.endswith("-autoencoder-9")


def test_history_is_valid_json_even_with_nan(tmp_path):
    folder = RunFolder.create(tmp_path, "r", "mlp")
    folder.write_history(rf.RUNNING, [{"round": 1, "server": {"loss": math.nan, "accuracy": math.inf}}], num_nodes=1)
    text = folder.file(rf.HISTORY).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["rounds"][0]["server"] == {"loss": None, "accuracy": None}
    assert not list(tmp_path.glob("r/.*.tmp"))


def test_model_is_saved_as_cpu_tensors_and_loads_back(tmp_path):
    settings = Settings()
    folder = completed(tmp_path, settings)
    state = torch.load(folder.file(rf.MODEL), weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())
    loaded = folder.load_model()
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), build_model(settings).state_dict().values())
    )


def test_load_model_checks_the_file_against_the_run_config(tmp_path):
    settings = Settings.from_run_config({"model": "autoencoder", "ae-hidden": "64", "ae-code-size": 8})
    folder = RunFolder.create(tmp_path, "ae", "autoencoder")
    folder.write_config(settings.to_run_config())
    with pytest.raises(RunFolderError, match="model.pt is missing"):
        folder.load_model()
    folder.write_model(build_model(Settings()).state_dict())  # an MLP
    with pytest.raises(RunFolderError, match="does not match config.json .model='autoencoder', encoder.0.weight"):
        folder.load_model()
    folder.file(rf.MODEL).write_bytes(b"truncated")
    with pytest.raises(RunFolderError, match="cannot be loaded"):
        folder.load_model()


class _WritesAMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_model_made_to_run_code_is_refused_and_runs_nothing(tmp_path):
    folder, marker = completed(tmp_path), tmp_path / "pwned"
    torch.save({"layer.weight": _WritesAMarker(marker)}, folder.file(rf.MODEL))
    with pytest.raises(RunFolderError, match=r"model.pt would import io.open when read.*nothing in it ran; put back"):
        folder.load_model()
    assert not marker.exists()
    torch.load(folder.file(rf.MODEL), weights_only=False)  # what an unguarded reader would do
    assert marker.exists()


def test_a_completed_run_reads_back_whole(tmp_path):
    run = read_completed_run(completed(tmp_path).path)
    assert run.num_partitions == 4 and run.settings == Settings() and run.rounds[0]["round"] == 0
    assert run.history["num-nodes"] == 4


@pytest.mark.parametrize(
    "status, message",
    [
        (rf.RUNNING, "is still in progress .history.json says 'running', 0 round.s. so far."),
        (rf.FAILED, r"failed \(boom\): fix the cause"),
        ("weird", "has status 'weird'"),
    ],
)
def test_unfinished_runs_are_refused_with_what_to_do(tmp_path, status, message):
    folder = completed(tmp_path)
    folder.write_history(status, [{"round": 0, "server": {}}], num_nodes=1, error="boom")
    with pytest.raises(RunFolderError, match=message):
        read_completed_run(folder.path)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RunFolderError, match="is not a folder"):
        RunFolder.open(tmp_path / "nope")
    with pytest.raises(RunFolderError, match=r"is not a run folder \(no config.json\)"):
        RunFolder.open(tmp_path)


def test_damaged_files_are_named(tmp_path):
    folder = completed(tmp_path)
    folder.file(rf.HISTORY).write_text("{")
    with pytest.raises(RunFolderError, match="history.json is unreadable"):
        read_completed_run(folder.path)
    folder = completed(tmp_path / "b", **{"num-partitions": None})
    with pytest.raises(RunFolderError, match="does not record how the nodes split MNIST"):
        read_completed_run(folder.path)
    folder.write_config({"model": "resnet"})
    with pytest.raises(RunFolderError, match="is not a valid run config .model='resnet' is unknown"):
        folder.settings()


def test_several_files_are_written_together(tmp_path):
    folder = completed(tmp_path)
    folder.write_files({rf.REPORT: b"# report", rf.REPORT_CURVES: b"png"})
    assert folder.file(rf.REPORT).read_bytes() == b"# report"
    assert folder.write_file(rf.CODES, b"x", at=tmp_path / "deep" / "c.npy") == tmp_path / "deep" / "c.npy"


def test_only_a_run_still_running_is_marked_interrupted(tmp_path):
    running = RunFolder.create(tmp_path, "a", "mlp")
    running.write_history(rf.RUNNING, [{"round": 0}], 3)
    assert running.mark_interrupted("Run 7 ended as 'finished:stopped'")
    assert running.history() == {
        "status": rf.INTERRUPTED,
        "num-nodes": 3,
        "rounds": [{"round": 0}],
        "error": "Run 7 ended as 'finished:stopped'",
    }
    done = RunFolder.create(tmp_path, "b", "mlp")
    done.write_history(rf.COMPLETED, [], 3)
    assert not done.mark_interrupted("late")
    assert done.history()["status"] == rf.COMPLETED
    assert not RunFolder.create(tmp_path, "c", "mlp").mark_interrupted("never started")


def test_a_run_whose_serverapp_died_is_marked_failed_only_while_it_says_running(tmp_path):
    folder = RunFolder.create(tmp_path, "a", "mlp")
    folder.write_history(rf.RUNNING, [{"round": 0}, {"round": 1}], 2)
    assert folder.mark_ended(rf.FAILED, "the SuperLink ended the run as 'finished:failed'")
    history = folder.history()
    assert history["status"] == rf.FAILED and history["rounds"] == [{"round": 0}, {"round": 1}]
    assert history["error"] == "the SuperLink ended the run as 'finished:failed'"
    assert not folder.mark_ended(rf.INTERRUPTED, "later")  # the first word stays
    assert folder.history()["status"] == rf.FAILED
    with pytest.raises(ValueError, match="not 'completed'"):
        folder.mark_ended(rf.COMPLETED, "nobody may claim a completion")


def test_a_run_folder_is_found_by_its_flower_run_id(tmp_path):
    for name, run_id in (("first", 11), ("second", 22)):
        RunFolder.create(tmp_path, name, "mlp").write_config({"run-id": run_id})
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / rf.CONFIG).write_text("{not json")
    (tmp_path / "stray.json").write_text("{}")
    assert RunFolder.of_run(tmp_path, 22) == RunFolder(tmp_path / "second")
    assert RunFolder.of_run(tmp_path, 33) is None
    assert RunFolder.of_run(tmp_path / "missing", 11) is None
