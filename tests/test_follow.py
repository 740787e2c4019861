"""launcher.follow and launcher.outcome: following a run on a SuperLink to its end, without Flower's
runtime. ``flwr`` is a fake on PATH that plays a script of answers (tests/test_e2e_follow.py runs the
real thing)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

import run_folder as rf
from launcher import PROJECT_ROOT
from launcher.flower_home import FlowerHome
from launcher.flwr_cli import RunStatus, run_status
from launcher.follow import SERVERAPP_FOLDER, Follower, broken_line, flwr_error, gave_up_line, main
from launcher.outcome import DONE, ENDED, LOST, NO_HEARTBEAT, conclude, head_line, resume_hint, shell_arg

UNAVAILABLE = (
    "Connection to the SuperLink is unavailable. Please check your network connection and 'address' in the "
    "SuperLink connection configuration."
)
BOXED = (
    "\x1b[92mINFO \x1b[0m:      Starting logstream for run_id `7`\n"
    "╭─ Error ──────────────────────────────────────────────────────────────────────╮\n"
    "│ Connection to the SuperLink is unavailable. Please check your network        │\n"
    "│ connection and 'address' in the SuperLink connection configuration.          │\n"
    "╰──────────────────────────────────────────────────────────────────────────────╯\n"
)
LOG = "Using SuperLink: lab (127.0.0.1:9443)\nINFO :      Writing results to /runs/exp\nINFO :      Round 1\n"


def listed(status: str, details: str = "") -> dict:
    runs = [{"run-id": "7", "status": status, "status-details": details}]
    return {"out": json.dumps({"success": True, "runs": runs})}


def refused(message: str) -> dict:
    return {"out": json.dumps({"success": False, "error-message": f"Using SuperLink: lab\n\n{message}"})}


class FakeHome(FlowerHome):
    """A Flower home whose ``flwr`` (in ``bin/``) answers each subcommand from ``plan.json``: the
    n-th call of ``flwr log`` gets ``plan["log"][n]`` (the last one again once they run out)."""

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        return {**env, "PATH": f"{self.path / 'bin'}{os.pathsep}{env['PATH']}"}

    def calls(self, command: str) -> list[list[str]]:
        return [json.loads(p.read_text()) for p in sorted(self.path.glob(f"calls-{command}-*"))]


def fake_flwr(tmp_path: Path, **plan: list[dict]) -> FakeHome:
    (tmp_path / "bin").mkdir(parents=True)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    script = tmp_path / "bin" / "flwr"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib, sys\n"
        f"d = pathlib.Path({str(tmp_path)!r})\n"
        "cmd = sys.argv[1]\n"
        "n = len(list(d.glob(f'calls-{cmd}-*')))\n"
        "(d / f'calls-{cmd}-{n:03d}').write_text(json.dumps(sys.argv[1:]))\n"
        "(d / f'home-{cmd}-{n:03d}').write_text(os.environ['FLWR_HOME'])\n"
        "steps = json.loads((d / 'plan.json').read_text())[cmd]\n"
        "step = steps[min(n, len(steps) - 1)]\n"
        "sys.stdout.write(step.get('out', '')); sys.stderr.write(step.get('err', '')); sys.stdout.flush()\n"
        "__import__('time').sleep(step.get('sleep', 0))\n"
        "sys.exit(step.get('code', 0))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return FakeHome(tmp_path)


def fake_on_path(monkeypatch, home: FakeHome) -> None:
    """The command's own Flower CLI finds the fake ``flwr`` first (it puts this venv's bin first on PATH)."""
    bin_dir = home.path / "bin"

    class Cli(FlowerHome):
        @property
        def env(self) -> dict[str, str]:
            env = super().env
            return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}

    monkeypatch.setattr("launcher.follow.FlowerHome", Cli)


def follower(home: FakeHome, lines: list[str], said: list[str], **kwargs) -> Follower:
    return Follower(home, "lab", 7, echo=lines.append, say=said.append, retry_s=0.05, **kwargs)


def test_flowers_boxed_error_becomes_one_line():
    assert flwr_error(BOXED) == UNAVAILABLE
    assert flwr_error("INFO : starting\nError: no such connection 'lab'\n") == "Error: no such connection 'lab'"
    assert flwr_error("") == ""


def test_the_status_tells_a_finished_run_and_a_run_the_superlink_does_not_know(tmp_path):
    home = fake_flwr(tmp_path, list=[listed("finished:failed", NO_HEARTBEAT), refused("[code: 16] Run ID not found.")])
    first, second = run_status(home, "lab", 7), run_status(home, "lab", 7)
    assert first == RunStatus("finished:failed", NO_HEARTBEAT) and first.finished and not first.unknown_run
    assert second.status is None and second.unknown_run and second.error == "[code: 16] Run ID not found."
    assert not RunStatus(None, error=UNAVAILABLE).unknown_run and not RunStatus("running").finished


def test_a_broken_stream_is_said_once_and_followed_again_without_repeating_the_log(tmp_path):
    home = fake_flwr(
        tmp_path,
        log=[{"out": LOG, "err": BOXED, "code": 1}, {"out": LOG + "INFO :      Round 2\n"}],
        list=[listed("running"), listed("finished:completed")],
    )
    lines, said = [], []
    watcher = follower(home, lines, said)
    assert watcher.until_end() == RunStatus("finished:completed", "")
    assert "".join(lines) == LOG + "INFO :      Round 2\n"  # the replayed start is not shown twice
    assert said == [broken_line(7, "lab", UNAVAILABLE, "running")]
    assert "the run goes on (the SuperLink says 'running')" in said[0]
    assert "`flwr log 7 lab --stream`" in said[0] and "`python -m launcher.follow lab --run-id 7`" in said[0]
    assert watcher.serverapp_folder == "/runs/exp"
    assert home.calls("log") == [["log", "7", "lab", "--stream"]] * 2


def test_following_gives_up_after_its_time_when_the_superlink_stays_away(tmp_path):
    home = fake_flwr(tmp_path, log=[{"err": BOXED, "code": 1}], list=[refused(UNAVAILABLE)])
    lines, said = [], []
    assert follower(home, lines, said, reattach_s=0.3).until_end() is None
    assert said[0] == broken_line(7, "lab", UNAVAILABLE, None) and "the SuperLink does not answer" in said[0]
    assert said[1:] == [gave_up_line(7, "lab", 0.3)] and "may go on" in said[1]
    assert len(home.calls("log")) >= 2  # it did try again


def test_a_stream_that_keeps_breaking_after_new_lines_is_said_each_time(tmp_path):
    home = fake_flwr(
        tmp_path,
        log=[{"out": "a\n", "code": 1}, {"out": "a\nb\n", "code": 1}, {"out": "a\nb\n"}],
        list=[listed("running"), listed("running"), listed("finished:stopped", "Stopped by user")],
    )
    lines, said = [], []
    assert follower(home, lines, said).until_end().status == "finished:stopped"
    assert lines == ["a\n", "b\n"] and len(said) == 2 and all("flwr log exited 1" in line for line in said)


def test_shell_arguments_are_written_as_one_types_them():
    assert shell_arg("lab") == "lab"
    assert shell_arg("resume-from='/runs/exp'") == "\"resume-from='/runs/exp'\""
    assert shell_arg("num-server-rounds=20 run-name='a b'") == "\"num-server-rounds=20 run-name='a b'\""
    assert shell_arg('run-name="$HOME"') == "'run-name=\"$HOME\"'"


def test_the_resume_hint_repeats_the_submission_with_resume_from():
    hint = resume_hint("lab", "/runs/exp", ["num-server-rounds=20 local-epochs=1"], submitted=True)
    assert hint == (
        'resume it with: python -m launcher.follow lab --run-config "num-server-rounds=20 local-epochs=1" '
        "--run-config \"resume-from='/runs/exp' run-name=''\""  # a new folder: the old one is never written into
    )
    toml = resume_hint("lab", "/runs/exp", ["presets/x.toml"], submitted=True)
    assert toml == "to resume it, set resume-from = '/runs/exp' and run-name = '' in presets/x.toml and submit it again"
    attached = resume_hint("lab", "/runs/exp", [], submitted=False)
    assert attached.endswith("the run config it had and --run-config \"resume-from='/runs/exp' run-name=''\"")


def test_the_head_of_the_line_says_what_flower_said():
    died = head_line(7, RunStatus("finished:failed", NO_HEARTBEAT))
    assert died == (
        f"Run 7 ended as 'finished:failed' (Flower: {NO_HEARTBEAT}): its ServerApp, or the SuperExec running it, died"
    )
    assert head_line(7, RunStatus("finished:failed", "ValueError: bad")) == (
        "Run 7 ended as 'finished:failed' (Flower: ValueError: bad)"
    )
    assert head_line(7, RunStatus("finished:stopped", "")) == "Run 7 was stopped"
    assert "no longer known" in head_line(7, RunStatus(None, error="[code: 16] Run ID not found."))


def run_folder_of(tmp_path: Path, run_id: int, status: str, rounds: int, checkpoint: bool = True) -> rf.RunFolder:
    folder = rf.RunFolder.create(tmp_path, f"run-{run_id}", "mlp")
    folder.write_config({"run-id": run_id, "output-dir": "/home/app/fedmnist-runs"})
    folder.write_history(status, [{"round": r} for r in range(rounds + 1)], 2)
    if checkpoint:
        folder.write_checkpoint(rf.Checkpoint(rounds, {}, [], 2, {}))
    return folder


def test_a_dead_serverapps_run_is_marked_failed_and_told_with_how_to_resume(tmp_path):
    folder = run_folder_of(tmp_path, 7, rf.RUNNING, rounds=3)
    code, line = conclude(
        RunStatus("finished:failed", NO_HEARTBEAT), 7, "lab", tmp_path, "/srv/runs/run-7", ["num-server-rounds=9"], True
    )
    assert code == ENDED == 1 and "\n" not in line
    assert line.startswith(f"Run 7 ended as 'finished:failed' (Flower: {NO_HEARTBEAT}): its ServerApp")
    assert f"history.json in {folder.path} now says 'failed'" in line
    assert line.endswith(
        "after round 3, resume it with: python -m launcher.follow lab --run-config num-server-rounds=9 "
        "--run-config \"resume-from='/srv/runs/run-7' run-name=''\"."
    )
    history = folder.history()
    assert history["status"] == rf.FAILED
    assert history["error"] == f"the SuperLink ended the run as 'finished:failed': {NO_HEARTBEAT}"


def test_a_stopped_run_is_marked_interrupted_and_its_path_taken_from_its_config(tmp_path):
    folder = run_folder_of(tmp_path, 8, rf.RUNNING, rounds=1)
    code, line = conclude(RunStatus("finished:stopped", "Stopped by user"), 8, "lab", tmp_path, None, [], False)
    assert code == ENDED and folder.history()["status"] == rf.INTERRUPTED
    assert "Run 8 was stopped (Flower: Stopped by user)" in line and "now says 'interrupted'" in line
    # the path as the ServerApp saw it, from the absolute output-dir of its config
    assert "--run-config \"resume-from='/home/app/fedmnist-runs/run-8' run-name=''\"" in line


def test_the_serverapps_own_word_is_kept(tmp_path):
    folder = run_folder_of(tmp_path, 9, rf.FAILED, rounds=2)
    code, line = conclude(RunStatus("finished:failed", "ValueError: bad"), 9, "lab", tmp_path, "/r/run-9", [], False)
    assert code == ENDED and f"history.json in {folder.path} says 'failed'" in line


def test_without_a_reachable_run_folder_the_line_still_says_how_to_resume(tmp_path):
    code, line = conclude(RunStatus("finished:failed", NO_HEARTBEAT), 7, "lab", tmp_path / "none", "/r/x", [], False)
    assert code == ENDED and f"its run folder is not under {tmp_path / 'none'} here" in line and "/r/x" in line
    code, line = conclude(RunStatus("finished:failed", "ConfigError: no"), 7, "lab", tmp_path, None, [], False)
    assert line.endswith("it left no run folder that this command saw: fix the cause and submit it again.")


def test_a_run_that_completed_no_round_is_not_offered_a_resume(tmp_path):
    run_folder_of(tmp_path, 5, rf.RUNNING, rounds=0, checkpoint=False)
    _, line = conclude(RunStatus("finished:failed", NO_HEARTBEAT), 5, "lab", tmp_path, "/r/run-5", [], False)
    assert "nothing to resume: submit it again." in line and "resume-from" not in line


def test_a_completed_run_exits_zero_naming_its_folder(tmp_path):
    folder = run_folder_of(tmp_path, 4, rf.COMPLETED, rounds=2)
    assert conclude(RunStatus("finished:completed"), 4, "lab", tmp_path, None, [], True) == (
        DONE,
        f"Run 4 completed: its run folder is {folder.path}.",
    )


def test_the_command_submits_follows_and_exits_non_zero_with_one_line(tmp_path, monkeypatch, capsys):
    home = fake_flwr(
        tmp_path / "home",
        run=[{"out": json.dumps({"success": True, "run-id": "7"})}],
        log=[{"out": LOG}],
        list=[listed("finished:failed", NO_HEARTBEAT)],
    )
    run_folder_of(tmp_path / "outputs", 7, rf.RUNNING, rounds=2)
    fake_on_path(monkeypatch, home)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "operator"))
    code = main(["lab", "--run-config", "num-server-rounds=5", "--outputs", str(tmp_path / "outputs")])
    out, err = capsys.readouterr()
    assert code == 1 and out == LOG
    assert err.splitlines()[0] == "Run 7 submitted to 'lab'."
    assert len(err.splitlines()) == 2 and "resume-from='/runs/exp'" in err.splitlines()[1]
    submitted = home.calls("run")[0]
    assert submitted[2:] == ["lab", "--format", "json", "--run-config", "num-server-rounds=5"]
    assert Path(submitted[1]).name.startswith("app-")  # a copy of the app, in a scratch folder
    assert rf.RunFolder(tmp_path / "outputs" / "run-7").history()["status"] == rf.FAILED


def test_the_command_uses_the_operators_own_flower_home_and_exits_zero_once_completed(tmp_path, monkeypatch, capsys):
    home = fake_flwr(tmp_path / "home", list=[listed("running"), listed("finished:completed")], log=[{"out": LOG}])
    fake_on_path(monkeypatch, home)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "operator"))
    assert main(["lab", "--run-id", "7", "--outputs", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out == LOG + "Run 7 completed: its run folder is /runs/exp.\n"
    homes = {p.read_text() for p in (tmp_path / "home").glob("home-*")}
    assert homes == {str(tmp_path / "operator")}  # the operator's connections, not a throw-away home


@pytest.mark.parametrize(
    "plan, message",
    [
        (refused("[code: 16] Run ID not found."), "error: run 7 on 'lab': [code: 16] Run ID not found."),
        (refused(UNAVAILABLE), f"error: run 7 on 'lab': {UNAVAILABLE}"),
    ],
)
def test_attaching_to_a_run_that_cannot_be_seen_is_refused_in_one_line(tmp_path, monkeypatch, capsys, plan, message):
    home = fake_flwr(tmp_path, list=[plan])
    fake_on_path(monkeypatch, home)
    assert main(["lab", "--run-id", "7"]) == 2
    assert capsys.readouterr().err.strip() == f"{message} (`flwr list lab`)"


def test_the_command_gives_up_with_its_own_exit_status(tmp_path, monkeypatch, capsys):
    home = fake_flwr(tmp_path, list=[listed("running"), refused(UNAVAILABLE)], log=[{"err": BOXED, "code": 1}])
    fake_on_path(monkeypatch, home)
    monkeypatch.setattr("launcher.follow.RETRY_S", 0.05)
    assert main(["lab", "--run-id", "7", "--reattach-s", "0.2"]) == LOST == 3
    assert capsys.readouterr().err.splitlines()[-1] == gave_up_line(7, "lab", 0.2)


def test_the_serverapps_folder_line_is_the_one_the_serverapp_logs():
    source = (PROJECT_ROOT / "server_app" / "app.py").read_text()
    assert 'log(INFO, "Writing results to %s", folder.path)' in source
    line = "\x1b[92mINFO \x1b[0m:      Writing results to /home/fedmnist/fedmnist-runs/20260101-mlp-7\n"
    assert SERVERAPP_FOLDER.search(line).group(1) == "/home/fedmnist/fedmnist-runs/20260101-mlp-7"


def test_following_stops_at_the_timeout_and_says_the_run_goes_on(tmp_path, monkeypatch, capsys):
    home = fake_flwr(tmp_path, list=[listed("running")], log=[{"out": LOG, "sleep": 30}])
    fake_on_path(monkeypatch, home)
    assert main(["lab", "--run-id", "7", "--timeout", "1"]) == LOST
    out, err = capsys.readouterr()
    assert out == LOG and err.strip() == (
        "Run 7 did not end within 1 s. Follow it again with `flwr log 7 lab --stream` or "
        "`python -m launcher.follow lab --run-id 7`; stop it with `flwr stop 7 lab`."
    )


def test_ctrl_c_or_sigterm_stops_following_and_not_the_run(tmp_path, monkeypatch, capsys):
    home = fake_flwr(tmp_path, list=[listed("running")])
    fake_on_path(monkeypatch, home)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Follower, "until_end", interrupted)
    assert main(["lab", "--run-id", "7"]) == 130
    assert capsys.readouterr().err.startswith("Stopped following run 7; the run goes on. Follow it again with")
    assert not home.calls("stop")
