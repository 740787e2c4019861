"""The launcher's own logic, without starting Flower: run-config parsing, the
checks made before anything starts, where run folders go, the run timeout, and
the small helpers that talk to the ``flwr`` CLI (driven here by a fake ``flwr``)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import launcher.ending as ending
import launcher.simulate as simulate
from launcher import PROJECT_ROOT, FlowerError
from launcher.flower_home import FlowerHome
from launcher.flwr_cli import _run_id_in, _status_in, flwr_run, lines_until, toml_value, wait_for_run
from launcher.processes import descendants, running, stop
from launcher.simulate import check_nodes, check_run_config, main, parse_run_config, pick_output_dir, run_simulation
from launcher.staging import staged_app
from task.config import ConfigError, Settings
from task.data import DataError
from task.ray_lean import MALLOC_SETTINGS

# what the SuperLink (and the SuperExec and simulation process it starts) gets besides Ray's settings
LEAN_MALLOC = {name: str(value) for name, value in MALLOC_SETTINGS.items()}

TUTORIAL = PROJECT_ROOT / "presets" / "tutorial.toml"


@pytest.fixture
def no_flower(monkeypatch):
    """Any attempt to start Flower fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("Flower was started")

    monkeypatch.setattr(simulate, "start_superlink", refuse)
    monkeypatch.setattr(simulate, "flwr_run", refuse)


@pytest.fixture
def fake_flower(monkeypatch) -> list[dict]:
    """Stand-ins for the SuperLink and ``flwr run`` on a machine without a GPU; returns the
    calls made to ``flwr_run`` (each with the ``superlink_env`` the SuperLink was given)."""
    calls: list[dict] = []
    superlinks: list[dict] = []

    def fake_superlink(home, simulation, env=None, while_starting=None):
        superlinks.append(dict(env or {}))
        if while_starting is not None:
            while_starting()
        return "127.0.0.1:9"

    def fake_flwr_run(home, connection, run_config, federation_config=None, **kwargs):
        calls.append(
            {"run_config": run_config, "federation": federation_config, "superlink_env": superlinks[-1], **kwargs}
        )
        return 1

    monkeypatch.setattr(simulate, "start_superlink", fake_superlink)
    monkeypatch.setattr(simulate, "flwr_run", fake_flwr_run)
    monkeypatch.setattr(simulate, "visible_gpus", lambda: [])
    monkeypatch.setattr("launcher.ray_cluster.check_cluster", lambda *args, **kwargs: None)  # no cluster here
    return calls


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


# --- parse_run_config -------------------------------------------------------


def test_key_value_pairs_take_toml_values():
    config = parse_run_config(["num-server-rounds=3 learning-rate=0.05 model='autoencoder' run-name=\"a b\""])
    assert config == {"num-server-rounds": 3, "learning-rate": 0.05, "model": "autoencoder", "run-name": "a b"}
    assert type(config["num-server-rounds"]) is int and type(config["learning-rate"]) is float


def test_a_preset_file_is_read_as_toml():
    with TUTORIAL.open("rb") as fh:
        expected = tomllib.load(fh)
    config = parse_run_config([str(TUTORIAL)])
    assert config == expected
    assert config["partitioning"] == "iid-balanced" and config["samples-per-class"] == 45


def test_repeated_items_merge_and_later_ones_win():
    config = parse_run_config([str(TUTORIAL), "num-server-rounds=3", "num-server-rounds=4 seed=7"])
    assert config["num-server-rounds"] == 4 and config["seed"] == 7
    assert config["samples-per-class"] == 45  # the rest of the preset stays
    assert parse_run_config(["local-epochs=1", str(TUTORIAL)])["local-epochs"] == 10  # the preset came later


@pytest.mark.parametrize(
    "item, message",
    [
        ("num-server-rounds", "holds no 'key=value' pair"),
        ("model=mlp", "cannot be read"),
        ("a=1 a=2", "cannot be read"),
    ],
)
def test_a_bad_pair_is_a_config_error_naming_it(item, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_run_config([item])
    assert f"'{item}'" in str(err.value)


def test_a_malformed_preset_file_is_a_config_error_naming_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "mlp"\nnum-server-rounds = \n')
    with pytest.raises(ConfigError, match="cannot be read") as err:
        parse_run_config([str(bad)])
    assert str(bad) in str(err.value) and "line 2" in str(err.value)


def test_a_preset_file_that_is_not_utf8_is_a_config_error(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('run-name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{bad}' cannot be read"):
        parse_run_config([str(bad)])


def test_a_missing_preset_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as err:
        parse_run_config([str(missing)])
    assert str(missing) in str(err.value)


def test_an_unreadable_preset_path_is_a_config_error_naming_it(tmp_path):
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot be read") as err:
        parse_run_config([str(folder)])
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("content", ['model = "mlp"\nnum-server-rounds = \n', None])
def test_main_turns_a_bad_preset_into_one_error_line_and_exit_2(tmp_path, capsys, no_flower, content):
    path = tmp_path / "preset.toml"
    if content is not None:
        path.write_text(content)
    assert main(["--num-supernodes", "2", "--run-config", str(path)]) == 2
    assert str(path) in _error_line(capsys)


# --- checks before Flower starts ---------------------------------------------


def test_check_run_config_names_an_unknown_key():
    with pytest.raises(ConfigError, match="unknown run-config key.s. num-rounds: the app declares"):
        check_run_config({"num-rounds": 3, "seed": 1})


def test_check_run_config_merges_the_app_defaults():
    settings = check_run_config({"seed": 7})
    assert settings.seed == 7 and settings.min_available_nodes == Settings().min_available_nodes


def test_more_min_available_nodes_than_supernodes_is_refused_before_flower_starts(no_flower):
    with pytest.raises(ConfigError) as err:
        run_simulation({"min-available-nodes": 5}, num_supernodes=3, echo=False)
    message = str(err.value)
    assert "min-available-nodes=5" in message and "--num-supernodes=3" in message
    assert "lower min-available-nodes or raise --num-supernodes" in message


def test_as_many_supernodes_as_min_available_nodes_is_accepted():
    check_nodes(Settings(min_available_nodes=3), 3)


def test_an_impossible_iid_balanced_split_is_refused_before_flower_starts(no_flower):
    with pytest.raises(ConfigError, match="samples-per-class=45 with 200 partitions needs 9000 images") as err:
        run_simulation(parse_run_config([str(TUTORIAL)]), num_supernodes=200, echo=False)
    assert str(err.value).startswith("--num-supernodes=200 does not fit partitioning='iid-balanced': ")


def test_the_tutorial_preset_fits_its_100_nodes():
    check_nodes(check_run_config(parse_run_config([str(TUTORIAL)])), 100)


def test_more_nodes_than_test_images_is_refused_for_the_local_test_shards():
    with pytest.raises(ConfigError, match="num-partitions=20000 must be between 1 and the 10000 items"):
        check_nodes(Settings(), 20000)  # 3 training images each would fit


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--num-supernodes", "3", "--run-config", "min-available-nodes=5"], "--num-supernodes=3"),
        (["--num-supernodes", "200", "--run-config", str(TUTORIAL)], "samples-per-class=45 with 200 partitions"),
        (["--num-supernodes", "2", "--run-config", "num-rounds=3"], "unknown run-config key(s) num-rounds"),
        (["--num-supernodes", "2", "--run-config", "num-server-rounds"], "'num-server-rounds' holds no 'key=value'"),
    ],
)
def test_main_returns_2_with_one_error_line_for_a_run_that_cannot_work(argv, expected, capsys, no_flower):
    assert main(argv) == 2
    assert expected in _error_line(capsys)


def test_main_returns_2_when_mnist_is_unreadable(tmp_path, capsys, no_flower):
    (tmp_path / "mnist-uint8.npz").write_bytes(b"not a zip")
    assert main(["--num-supernodes", "2", "--run-config", f"data-dir='{tmp_path}'"]) == 2
    assert "is unreadable" in _error_line(capsys)


# --- where the run folder goes -----------------------------------------------


def test_the_output_dir_flag_wins_over_the_run_config(tmp_path):
    assert pick_output_dir(tmp_path / "flag", {"output-dir": str(tmp_path / "cfg")}) == tmp_path / "flag"


def test_a_relative_output_dir_flag_is_taken_from_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pick_output_dir(Path("out"), {"output-dir": "/elsewhere"}) == tmp_path.resolve() / "out"


def test_the_run_config_output_dir_is_used_without_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pick_output_dir(None, {"output-dir": str(tmp_path / "cfg")}) == tmp_path / "cfg"
    assert pick_output_dir(None, {"output-dir": "runs"}) == tmp_path / "home" / "runs"  # as the app reads it
    assert pick_output_dir(None, {"output-dir": "~/x"}) == tmp_path / "home" / "x"


def test_without_flag_or_run_config_runs_go_to_outputs_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pick_output_dir(None, {"seed": 1}) == tmp_path.resolve() / "outputs"


@pytest.mark.parametrize(
    "flag, config_dir, expected",
    [("flag", "cfg", "flag"), (None, "cfg", "cfg"), (None, None, "outputs")],
)
def test_main_sends_the_run_to_the_chosen_output_dir(
    tmp_path, monkeypatch, capsys, fake_flower, flag, config_dir, expected
):
    monkeypatch.chdir(tmp_path)
    argv = ["--num-supernodes", "2", "--run-config", "run-name='r'"]
    if config_dir:
        argv += ["--run-config", f"output-dir='{tmp_path / config_dir}'"]
    if flag:
        argv += ["--output-dir", flag]
    assert main(argv) == 0
    run_dir = tmp_path.resolve() / expected / "r"
    assert f"Run folder: {run_dir}" in capsys.readouterr().out
    assert fake_flower[0]["run_config"]["output-dir"] == str(run_dir.parent)


# --- the run timeout ---------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_timeout_must_be_a_positive_number_of_seconds(value, capsys, no_flower):
    with pytest.raises(SystemExit) as exit_:
        main(["--timeout", value])
    assert exit_.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_timeout_is_passed_down_to_flwr_run(fake_flower, tmp_path):
    assert main(["--num-supernodes", "2", "--output-dir", str(tmp_path), "--timeout", "12.5"]) == 0
    assert main(["--num-supernodes", "2", "--output-dir", str(tmp_path)]) == 0
    assert [call["timeout"] for call in fake_flower] == [12.5, 3600.0]


def test_a_run_that_flower_ends_without_the_server_app_is_marked_interrupted(fake_flower, monkeypatch, tmp_path):
    """`flwr stop` kills a simulation outright: its ServerApp never writes how it ended."""
    import run_folder as rf

    def stopped(home, connection, run_config, federation_config=None, **kwargs):
        folder = rf.RunFolder.create(run_config["output-dir"], run_config["run-name"], "mlp")
        folder.write_history(rf.RUNNING, [{"round": 0}], 2)
        raise FlowerError("Run 7 ended as 'finished:stopped': ")

    monkeypatch.setattr(simulate, "flwr_run", stopped)
    with pytest.raises(FlowerError):
        run_simulation({"run-name": "x"}, 2, output_dir=tmp_path, echo=False)
    history = rf.RunFolder(tmp_path / "x").history()
    assert history["status"] == rf.INTERRUPTED and history["error"].startswith("Run 7 ended as 'finished:stopped'")


def test_the_staged_app_bundles_the_same_files_without_walking_the_ignored_ones(tmp_path):
    from task.flower_compat import build_fab_from_disk

    app = tmp_path / "app"
    for rel in [
        "pyproject.toml",
        "task/model.py",
        "presets/a.toml",
        ".venv/lib/x.py",
        "outputs/run/config.json",
        "deploy/wheelhouse/torch.whl",
        "deploy/wheelhouse/README.md",
        ".git/HEAD",
        "task/__pycache__/m.pyc",
    ]:
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text("x = 1\n")
    (app / "pyproject.toml").write_text((PROJECT_ROOT / "pyproject.toml").read_text())
    (app / ".gitignore").write_text((PROJECT_ROOT / ".gitignore").read_text())
    home = FlowerHome(tmp_path / "home")
    staged = staged_app(home, app)
    kept = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert kept == [".gitignore", "deploy/wheelhouse/README.md", "presets/a.toml", "pyproject.toml", "task/model.py"]
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)
    assert staged_app(home, app) == staged  # once per Flower home


def test_lines_until_gives_every_line_then_stops_at_the_end():
    read, write = os.pipe()
    with os.fdopen(write, "w") as w:
        w.write("one\ntwo\n")
    with os.fdopen(read) as r:
        assert list(lines_until(r, time.monotonic() + 10)) == ["one\n", "two\n"]


def test_lines_until_times_out_while_the_stream_is_silent():
    read, write = os.pipe()
    with os.fdopen(read) as r, os.fdopen(write, "w") as w:
        w.write("first\n")
        w.flush()
        start = time.monotonic()
        lines = lines_until(r, start + 0.3)
        assert next(lines) == "first\n"
        with pytest.raises(TimeoutError):
            next(lines)
        assert 0.25 < time.monotonic() - start < 5


class FakeHome(FlowerHome):
    """A Flower home whose ``flwr`` is a shell script in ``bin/``."""

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        return {**env, "PATH": f"{self.path / 'bin'}{os.pathsep}{env['PATH']}"}


def _fake_flwr(
    tmp_path: Path,
    log: str,
    status: str = "finished:completed",
    run: str = """echo '{"success": true, "run-id": "7"}'""",
) -> FakeHome:
    """``flwr run`` runs the shell snippet ``run`` (by default: JSON naming run 7), ``flwr log``
    the snippet ``log``; ``flwr list`` reports ``status``."""
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "flwr"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/args-$1"\n'
        'if [ "$1" = list ]; then\n'
        f'  echo \'{{"runs": [{{"run-id": 7, "status": "{status}", "status-details": "why"}}]}}\'\n'
        "  exit 0\n"
        "fi\n"
        f'if [ "$1" = run ]; then\n  {run}\n  exit $?\nfi\n'
        f"{log}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return FakeHome(tmp_path)


def test_flwr_run_sends_the_config_and_returns_the_run_id(tmp_path, capsys):
    home = _fake_flwr(tmp_path, 'echo "Round 1 done"')
    run_config = {"run-name": 'a "b" c', "seed": 3, "learning-rate": 0.05, "fast": True}
    run_id = flwr_run(home, "sim", run_config, {"num-supernodes": 2}, echo=True, timeout=30)
    assert run_id == 7
    args = (tmp_path / "args-run").read_text().splitlines()
    with open(args[args.index("--run-config") + 1], "rb") as fh:  # a TOML file: no shell quoting to get wrong
        assert tomllib.load(fh) == run_config
    assert args[args.index("--federation-config") + 1] == "num-supernodes=2"
    assert "--format" in args and args[args.index("--format") + 1] == "json"
    assert (tmp_path / "args-log").read_text().splitlines() == ["log", "7", "sim", "--stream"]
    assert (tmp_path / "args-list").read_text().splitlines()[:4] == ["list", "sim", "--run-id", "7"]
    assert "Round 1 done" in capsys.readouterr().out


def test_a_superlink_that_stops_answering_ends_the_wait_with_flowers_reason(tmp_path):
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "flwr"
    unavailable = (
        '{"success": false, "error-message": "Using SuperLink: sim\\n\\nConnection to the SuperLink is unavailable."}'
    )
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{unavailable}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    start = time.monotonic()
    with pytest.raises(
        FlowerError,
        match=r"Run 7: the SuperLink has not answered for 2 s \(last seen 'unknown'\): "
        r"Connection to the SuperLink is unavailable.$",
    ):
        wait_for_run(FakeHome(tmp_path), "sim", 7, timeout=60, unreachable_s=2)
    assert time.monotonic() - start < 30


def test_flwr_run_reports_a_run_that_did_not_complete(tmp_path):
    home = _fake_flwr(tmp_path, "true", status="finished:failed")
    with pytest.raises(FlowerError, match="Run 7 ended as 'finished:failed': why"):
        flwr_run(home, "sim", {}, echo=False, timeout=30)


def test_a_refused_submission_is_told_in_flowers_own_words(tmp_path):
    refusal = """echo '{"success": false, "error-message": "No such file: presets/x.toml"}'"""
    home = _fake_flwr(tmp_path, "true", run=refusal)
    with pytest.raises(FlowerError, match="did not start the run .exit 0.:\nNo such file: presets/x.toml$"):
        flwr_run(home, "sim", {}, echo=False, timeout=30)


def test_flwr_run_reports_a_submission_that_failed(tmp_path):
    home = _fake_flwr(tmp_path, "true", run="echo 'Error: SuperLink unreachable' >&2; exit 1")
    with pytest.raises(FlowerError, match="flwr run did not start the run .exit 1.:\nError: SuperLink unreachable"):
        flwr_run(home, "sim", {}, echo=False, timeout=30)


def test_flwr_run_is_stopped_at_the_timeout_even_when_it_prints_nothing(tmp_path):
    home = _fake_flwr(tmp_path, f'echo $$ > "{tmp_path}/pid"; exec sleep 30')
    start = time.monotonic()
    stopped = r"Run 7 did not finish within 0.5 s, so it was stopped: give a larger --timeout"
    with pytest.raises(FlowerError, match=stopped):
        flwr_run(home, "sim", {}, echo=False, timeout=0.5)
    assert time.monotonic() - start < 10
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left running
        os.kill(int((tmp_path / "pid").read_text()), 0)


# --- --report ------------------------------------------------------------------


@pytest.mark.parametrize("error", [ConfigError("bad knob"), DataError("MNIST gone")])
def test_a_report_error_is_one_line_and_exit_2_and_the_run_folder_stays(
    tmp_path, monkeypatch, capsys, fake_flower, error
):
    import report

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "history.json").write_text("{}")

    def fail(path):
        assert path == run_dir
        raise error

    monkeypatch.setattr(report, "make_report", fail)
    argv = ["--num-supernodes", "2", "--output-dir", str(tmp_path), "--run-config", "run-name='r'", "--report"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {error}"
    assert [p.name for p in run_dir.iterdir()] == ["history.json"]


# --- small helpers --------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [(True, "true"), (False, "false"), (3, "3"), (0.1, "0.1"), ("mlp", '"mlp"'), ("a b", '"a b"')],
)
def test_toml_value_writes_toml(value, text):
    assert toml_value(value) == text


@pytest.mark.parametrize("value", [True, 0, -7, 0.001, 1e-05, 2.5e20, "", 'say "hi"', "C:\\runs", "é ü"])
def test_toml_value_round_trips_through_toml(value):
    parsed = tomllib.loads(f"k = {toml_value(value)}")["k"]
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "text, run_id",
    [
        ('{"success": true, "run-id": "1234", "fab-id": "x"}', 1234),
        ('{"success": false, "run-id": null}', None),
        ("Successfully started run 56", None),
        ("", None),
    ],
)
def test_run_id_in_reads_flwr_run_json(text, run_id):
    assert _run_id_in(text) == run_id


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"runs": [{"run-id": 1, "status": "finished:completed", "status-details": ""}]}', ("finished:completed", "")),
        ('{"runs": [{"status": ""}, {"status": "running", "status-details": "round 2"}]}', ("running", "round 2")),
        ('{"runs": []}', None),
        ("[1, 2]", None),
        ("Error: no such run", None),
        ("", None),
    ],
)
def test_status_in_reads_flwr_list_json(text, expected):
    assert _status_in(text) == expected


# --- GPUs without asking -------------------------------------------------------


def test_on_a_cpu_only_machine_clients_get_no_gpu_and_nothing_is_said(fake_flower, tmp_path, capsys):
    assert main(["--num-supernodes", "2", "--output-dir", str(tmp_path)]) == 0
    assert fake_flower[0]["federation"] == {
        "num-supernodes": 2,
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": 0,
    }
    assert "GPU" not in capsys.readouterr().out


def test_on_a_gpu_machine_clients_share_it_by_default_and_the_launcher_says_so(
    fake_flower, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(simulate, "visible_gpus", lambda: ["NVIDIA H100 80GB HBM3"])
    assert main(["--num-supernodes", "2", "--output-dir", str(tmp_path)]) == 0
    assert fake_flower[0]["federation"]["client-resources-num-gpus"] == simulate.DEFAULT_GPU_SHARE == 0.25
    out = capsys.readouterr().out
    assert "GPU found (NVIDIA H100 80GB HBM3): each virtual client gets 0.25 of a GPU (4 train side by side" in out
    assert "--gpus-per-client 0 keeps the clients on the CPU" in out


def test_gpus_per_client_0_keeps_clients_on_the_cpu_without_looking_for_a_gpu(fake_flower, tmp_path, monkeypatch):
    monkeypatch.setattr(simulate, "visible_gpus", lambda: pytest.fail("looked for GPUs"))
    assert main(["--num-supernodes", "2", "--output-dir", str(tmp_path), "--gpus-per-client", "0"]) == 0
    assert fake_flower[0]["federation"]["client-resources-num-gpus"] == 0


def test_a_run_pinned_to_the_cpu_gets_no_gpu_share():
    assert simulate.gpu_share(None, ["NVIDIA A100"], device="cpu") == (0.0, None)
    assert simulate.gpu_share(None, [], device="auto") == (0.0, None)
    assert simulate.gpu_share(0.5, ["NVIDIA A100"]) == (0.5, None)
    share, note = simulate.gpu_share(0.5, [])
    assert share == 0.5 and "no NVIDIA GPU is visible" in note


@pytest.mark.parametrize("value", ["-1", "nan", "lots"])
def test_a_bad_gpu_share_is_refused(value, capsys, no_flower):
    with pytest.raises(SystemExit) as exit_:
        main(["--gpus-per-client", value])
    assert exit_.value.code == 2


def _fake_nvidia_smi(tmp_path, monkeypatch, stdout: str, rc: int = 0) -> None:
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{stdout}EOF\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


TWO_GPUS = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb)\n"


def test_visible_gpus_reads_nvidia_smi(tmp_path, monkeypatch):
    from launcher.gpus import visible_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_nvidia_smi(tmp_path, monkeypatch, TWO_GPUS)
    assert visible_gpus() == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpus() == ["NVIDIA A100-SXM4-40GB"]
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert visible_gpus() == []


def test_visible_gpus_is_empty_when_nvidia_smi_fails_or_is_missing(tmp_path, monkeypatch):
    from launcher.gpus import visible_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA-SMI has failed\n", rc=9)
    assert visible_gpus() == []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    if not Path("/proc/driver/nvidia/gpus").is_dir():
        assert visible_gpus() == []


# --- an existing Ray cluster ----------------------------------------------------


def test_ray_address_reaches_the_simulation_and_no_gpu_is_guessed(fake_flower, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(simulate, "visible_gpus", lambda: ["NVIDIA H100"])  # this machine's GPU is not the cluster's
    assert main(["--num-supernodes", "2", "--output-dir", str(tmp_path), "--ray-address", "10.0.0.5:6379"]) == 0
    assert fake_flower[0]["superlink_env"] == {**LEAN_MALLOC, "RAY_ADDRESS": "10.0.0.5:6379", "RAY_DEDUP_LOGS": "0"}
    assert fake_flower[0]["federation"]["client-resources-num-gpus"] == 0
    assert "Virtual clients run on the Ray cluster at 10.0.0.5:6379." in capsys.readouterr().out


def test_ray_address_defaults_to_the_environment(fake_flower, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    assert main(["--num-supernodes", "2", "--output-dir", str(tmp_path)]) == 0
    assert fake_flower[0]["superlink_env"] == {**LEAN_MALLOC, "RAY_ADDRESS": "10.0.0.7:6379", "RAY_DEDUP_LOGS": "0"}


def test_without_an_address_the_simulation_starts_its_own_ray(fake_flower, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")  # inherited, but not asked for
    run_simulation({}, 2, tmp_path, echo=False)
    assert fake_flower[0]["superlink_env"] == {**LEAN_MALLOC, "RAY_ADDRESS": None}


def test_malloc_settings_given_by_the_user_stay_theirs_and_verbose_keeps_glibcs_own(fake_flower, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")  # the SuperLink inherits the user's own value
    run_simulation({}, 2, tmp_path / "a", echo=False)
    assert fake_flower[0]["superlink_env"] == {"MALLOC_MMAP_THRESHOLD_": "131072", "RAY_ADDRESS": None}
    run_simulation({}, 2, tmp_path / "b", echo=False, verbose=True)
    assert fake_flower[1]["superlink_env"] == {"RAY_ADDRESS": None, "FEDMNIST_RAY_FULL": "1"}


def test_a_none_in_spawn_env_removes_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMNIST_PROBE", "inherited")
    home = FlowerHome(tmp_path)
    for name, env in (("kept", None), ("removed", {"FEDMNIST_PROBE": None}), ("set", {"FEDMNIST_PROBE": "x"})):
        home.spawn(name, ["sh", "-c", 'echo "probe=${FEDMNIST_PROBE-unset}"'], env=env).wait()
    assert [home.log_tail(n) for n in ("kept", "removed", "set")] == ["probe=inherited", "probe=unset", "probe=x"]
    home.stop_all()


def test_stop_reaches_processes_that_left_the_group(tmp_path):
    """As the SuperLink's SuperExec does: a child in a session of its own, with a child of its own."""
    script = (
        "import subprocess, sys, time\n"
        'inner = \'import subprocess, time; subprocess.Popen(["sleep", "300"]); time.sleep(300)\'\n'
        "subprocess.Popen([sys.executable, '-c', inner], start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 20
    while len(descendants(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = descendants(proc.pid)
    assert len(tree) == 2
    assert os.getpgid(tree[0]) != os.getpgid(proc.pid)  # out of reach of killpg(proc.pid)
    stop(proc, grace=1)
    time.sleep(0.2)
    assert [pid for pid in tree if running(pid)] == []


# --- a run ends when its ServerApp ends ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _history(status: str, failures: list[dict] | None = None) -> dict:
    return {
        "status": status,
        "num-nodes": 3,
        "rounds": [{"round": 0, "failures": []}, {"round": 1, "failures": failures or []}],
    }


def _no_reply(server_round: int, pid: int | None, node: int | None = None, reason: str = ending.NO_REPLY) -> dict:
    return {"round": server_round, "phase": "train", "attempt": 1, "partition-id": pid, "node": node, "reason": reason}


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_flower_is_given_the_grace_after_the_final_status_and_no_longer(final):
    clock, written = Clock(), [None, _history("running"), _history("running"), _history(final, [_no_reply(1, 2, 77)])]
    end = ending.ServerAppEnd(lambda: written.pop(0) if len(written) > 1 else written[0], grace_s=5.0, clock=clock)
    assert [end(), end(), end()] == [False, False, False]  # nothing yet, then a run still going
    assert end() is False and end.final_at == 100.0 and end.status == final  # final: the grace starts now
    clock.now = 104.9
    assert end() is False and not end.expired
    clock.now = 105.0
    assert end() is True and end.expired


def test_a_run_completed_with_every_client_answered_waits_only_the_short_grace():
    clock = Clock()
    end = ending.ServerAppEnd(lambda: _history("completed"), grace_s=5.0, clock=clock, done_grace_s=1.0)
    assert end() is False and end.done
    clock.now += 1.0
    assert end() is True and end.expired and end.done
    failed = ending.ServerAppEnd(lambda: _history("failed"), grace_s=5.0, clock=clock, done_grace_s=1.0)
    assert failed() is False and not failed.done
    clock.now += 1.0
    assert failed() is False  # a failed run gets the whole grace


def test_a_run_interrupted_or_still_running_never_ends_the_wait():
    clock = Clock()
    for status in ("running", "interrupted"):
        end = ending.ServerAppEnd(lambda status=status: _history(status), grace_s=0.0, clock=clock)
        clock.now += 1000
        assert end() is False and end() is False and end.final_at is None


def test_a_final_history_left_from_before_the_run_does_not_end_it(tmp_path):
    """A reused run-name: the ServerApp refuses the folder, and its old 'completed' is not this run's."""
    import run_folder as rf

    folder = rf.RunFolder.create(tmp_path, "reused", "mlp")
    folder.write_history(rf.COMPLETED, [{"round": 0, "failures": []}], 2)
    read = ending.fresh_history(folder.path)
    assert read() is None
    folder.write_history(rf.RUNNING, [{"round": 0, "failures": []}], 2)
    assert read()["status"] == rf.RUNNING
    assert ending.fresh_history(tmp_path / "not-yet")() is None  # nothing to read before the ServerApp writes


def test_the_final_statuses_are_the_run_folders():
    import run_folder as rf

    assert (ending.COMPLETED, ending.FAILED) == (rf.COMPLETED, rf.FAILED)


def test_unanswered_clients_are_those_recorded_without_a_reply_each_once_with_the_last_round():
    history = _history(
        "completed", [_no_reply(2, 3, 30), _no_reply(2, 1, 10), _no_reply(2, 0, 5, reason="the node failed: x")]
    )
    history["rounds"].append({"round": 3, "failures": [_no_reply(3, 1, 10), _no_reply(3, None)]})
    found = [(f["partition-id"], f["node"], f["round"]) for f in ending.unanswered(history)]
    assert found == [(1, 10, 3), (3, 30, 2)]


def test_the_abandoned_line_names_the_clients_that_had_not_replied():
    end = ending.ServerAppEnd(lambda: None, grace_s=5.0)
    end.history = _history("completed", [_no_reply(1, 2, 123456789)])
    line = ending.abandoned_line(end)
    assert "\n" not in line
    assert line == (
        "The run completed (so says its ServerApp), but Flower's simulation had not finished 5 s later: "
        "stopping Flower's processes; abandoned client(s) that had not replied: partition 2 "
        "(node 123456789) since round 1."
    )
    end.history = _history("failed")
    assert ending.abandoned_line(end).endswith("no client is recorded as unanswered in history.json.")


def test_lines_until_stops_when_asked_even_while_the_stream_is_silent():
    read, write = os.pipe()
    with os.fdopen(read) as r, os.fdopen(write, "w") as w:
        w.write("first\n")
        w.flush()
        start = time.monotonic()
        lines = list(lines_until(r, start + 60, stop_when=lambda: time.monotonic() - start > 0.3, poll_s=0.05))
        assert lines == ["first\n"]
        assert time.monotonic() - start < 5


def test_flwr_run_stops_following_a_run_whose_server_app_has_ended(tmp_path):
    """Flower's log never ends and Flower calls the run 'running': the caller's word ends the wait."""
    home = _fake_flwr(tmp_path, f'echo $$ > "{tmp_path}/pid"; echo "Round 2 done"; exec sleep 30', status="running")
    asked = []

    def ended() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 3

    start = time.monotonic()
    assert flwr_run(home, "sim", {}, echo=False, timeout=60, ended=ended) == 7
    assert time.monotonic() - start < 10
    assert not (tmp_path / "args-list").exists()  # Flower was not asked how the run ended
    with pytest.raises(ProcessLookupError):  # `flwr log` stopped and reaped
        os.kill(int((tmp_path / "pid").read_text()), 0)


def _server_app_that_ends(status: str, error: str | None = None):
    """A stand-in for flwr_run: the ServerApp writes its final history, and Flower never finishes."""
    import run_folder as rf

    def run(home, connection, run_config, federation_config=None, ended=None, **kwargs):
        folder = rf.RunFolder.create(run_config["output-dir"], run_config["run-name"], "mlp")
        first = {
            "round": 0,
            "server": {"accuracy": 0.1, "loss": 2.3},
            "failures": [],
            "wall-time-s": 0.0,
            "elapsed-s": 0.0,
        }
        folder.write_history(rf.RUNNING, [first], 3)
        assert ended() is False
        last = {
            **first,
            "round": 1,
            "server": {"accuracy": 0.9, "loss": 0.3},
            "failures": [_no_reply(1, 2, 77)],
            "wall-time-s": 40.0,
            "elapsed-s": 40.0,
        }
        folder.write_history(status, [first, last], 3, error=error)
        deadline = time.monotonic() + 10
        while not ended():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return 5

    return run


def test_a_completed_run_is_left_as_written_and_the_abandoned_clients_are_named(
    fake_flower, monkeypatch, tmp_path, capsys
):
    import run_folder as rf

    monkeypatch.setattr(ending, "GRACE_S", 0.2)
    monkeypatch.setattr(simulate, "flwr_run", _server_app_that_ends(rf.COMPLETED))
    argv = ["--num-supernodes", "3", "--output-dir", str(tmp_path), "--run-config", "run-name='r' num-server-rounds=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "abandoned client(s) that had not replied: partition 2 (node 77) since round 1." in out
    assert rf.RunFolder(tmp_path / "r").history()["status"] == rf.COMPLETED


def test_a_failed_run_whose_flower_is_stopped_stays_failed_and_exits_1(fake_flower, monkeypatch, tmp_path, capsys):
    import run_folder as rf

    monkeypatch.setattr(ending, "GRACE_S", 0.2)
    monkeypatch.setattr(simulate, "flwr_run", _server_app_that_ends(rf.FAILED, error="RoundFailed: Round 1: 0 good"))
    argv = ["--num-supernodes", "3", "--output-dir", str(tmp_path), "--run-config", "run-name='r' num-server-rounds=1"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "partition 2 (node 77)" in captured.out
    assert captured.err.strip() == "error: Run 5 failed: RoundFailed: Round 1: 0 good"
    history = rf.RunFolder(tmp_path / "r").history()
    assert (history["status"], history["error"]) == (rf.FAILED, "RoundFailed: Round 1: 0 good")  # not 'interrupted'
