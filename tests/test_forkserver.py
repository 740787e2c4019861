"""The node's fork server and its ``flwr-clientapp`` (launcher.forkserver, launcher.warm_clientapp,
launcher.warm), driven through the real command a SuperExec runs, with a stand-in entry point
where Flower's would need a SuperNode; the deployed runs are in tests/test_e2e_warm.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from launcher import PROJECT_ROOT
from launcher.forkserver import NOTED_FILE, SOCKET_ENV, check_private
from launcher.warm import SOCKET_NAME, prepare, server_command
from launcher.warm_clientapp import HANDSHAKE_S, WARM_ENV
from tests.warm_checks import children_cpu_s

ENTRY = """
import json, os, sys, time
from pathlib import Path

def main():
    Path(os.environ["RUNS_DIR"], str(os.getpid())).touch()  # one file per message that really ran
    args = sys.argv[1:]
    if args[0] == "report":
        torch = sys.modules.get("torch")
        print(json.dumps({
            "pid": os.getpid(), "ppid": os.getppid(), "argv": args, "cwd": os.getcwd(),
            "mark": os.environ.get("MARK"), "umask": os.umask(0), "name": Path("/proc/self/comm").read_text().strip(),
            "modules": sorted(m for m in sys.modules if "." not in m),
            "cuda": torch is not None and torch.cuda.is_initialized(),
        }), flush=True)
        print("to stderr", file=sys.stderr)
    elif args[0] == "raise":
        raise RuntimeError("boom")
    elif args[0] == "exit":
        return int(args[1])
    elif args[0] == "sleep":
        print(os.getpid(), flush=True)
        time.sleep(60)
    elif args[0] == "spin":
        end = time.process_time() + float(args[1])
        while time.process_time() < end:
            pass
"""


def _env(folder: Path, entry_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, **prepare(folder), "PYTHONPATH": f"{entry_dir}{os.pathsep}{PROJECT_ROOT}"}
    env["RUNS_DIR"] = str(entry_dir / "runs")
    return {**env, **extra}


@pytest.fixture
def node():
    """A private folder with the ``flwr-clientapp`` command, and the entry point a server there runs;
    outside pytest's own temporary folder (mode 0700), so that another user could reach this one."""
    base = Path(tempfile.mkdtemp(prefix="fedmnist-test-warm-"))
    base.chmod(0o711)
    folder = base / "warm"
    folder.mkdir(mode=0o700)
    entry_dir = base / "entry"
    (entry_dir / "runs").mkdir(parents=True)
    (entry_dir / "fake_entry.py").write_text(ENTRY)
    yield folder, entry_dir
    shutil.rmtree(base, ignore_errors=True)


def start_server(folder: Path, entry_dir: Path, preload: str = "json") -> subprocess.Popen:
    cmd = server_command(folder) + ["--preload", preload, "--entry-point", "fake_entry:main"]
    proc = subprocess.Popen(cmd, env=_env(folder, entry_dir), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / SOCKET_NAME).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    return proc


@pytest.fixture
def server(node):
    folder, entry_dir = node
    proc = start_server(folder, entry_dir)
    yield folder, entry_dir, proc
    proc.kill()
    proc.wait()


def clientapp(folder: Path, entry_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = _env(folder, entry_dir, **kwargs.pop("env", {}))
    return subprocess.run(["flwr-clientapp", *args], env=env, capture_output=True, text=True, timeout=120, **kwargs)


def runs(entry_dir: Path) -> int:
    return len(list((entry_dir / "runs").iterdir()))


def test_the_child_takes_the_callers_command_line_environment_folder_and_streams(server, tmp_path):
    folder, entry_dir, _ = server
    done = clientapp(folder, entry_dir, "report", "--token", "x", cwd=tmp_path, env={"MARK": "m1"}, umask=0o027)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["report", "--token", "x"] and seen["mark"] == "m1"
    assert seen["cwd"] == str(tmp_path) and seen["umask"] == 0o027
    assert seen["name"] == "flwr-clientapp" and "to stderr" in done.stderr
    assert "fedmnist:" not in done.stderr  # no fallback
    assert runs(entry_dir) == 1


def test_exit_codes_pass_through_and_a_raising_child_affects_only_its_message(server):
    folder, entry_dir, proc = server
    assert clientapp(folder, entry_dir, "exit", "3").returncode == 3
    raised = clientapp(folder, entry_dir, "raise")
    assert raised.returncode == 1 and "RuntimeError: boom" in raised.stderr
    after = clientapp(folder, entry_dir, "report")
    assert after.returncode == 0 and json.loads(after.stdout)["argv"] == ["report"]
    assert proc.poll() is None


def test_what_a_message_cost_counts_as_the_servers_children_and_no_waiter_lingers(server):
    """The node's CPU shows where it went (``ps`` cutime): the server collects its ended waiters,
    each of which waited for its message's child."""
    folder, entry_dir, proc = server
    assert clientapp(folder, entry_dir, "spin", "0.4").returncode == 0
    deadline = time.monotonic() + 10
    while True:
        children_cpu = children_cpu_s(proc.pid)
        left = psutil.Process(proc.pid).children()
        if (children_cpu >= 0.35 and not left) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert children_cpu >= 0.35 and left == [], (children_cpu, left)


def _sleeping(folder: Path, entry_dir: Path) -> tuple[subprocess.Popen, int]:
    client = subprocess.Popen(
        ["flwr-clientapp", "sleep"], env=_env(folder, entry_dir), stdout=subprocess.PIPE, text=True
    )
    return client, int(client.stdout.readline())


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_signals_reach_the_child_and_the_caller_ends_as_it_did(server):
    folder, entry_dir, _ = server
    client, child = _sleeping(folder, entry_dir)
    assert child != client.pid
    client.send_signal(signal.SIGTERM)
    assert client.wait(10) == -signal.SIGTERM
    assert _gone(child)


def test_a_killed_caller_takes_its_child_with_it(server):
    folder, entry_dir, _ = server
    client, child = _sleeping(folder, entry_dir)
    client.kill()
    client.wait()
    assert _gone(child)


FLOWER_USAGE = "--runtime-api-address"  # in the usage of Flower's own flwr-clientapp


def test_without_a_server_flowers_own_clientapp_runs_and_the_log_says_so_once(node):
    folder, entry_dir = node
    first, second = clientapp(folder, entry_dir, "--help"), clientapp(folder, entry_dir, "--help")
    assert first.returncode == second.returncode == 0
    assert FLOWER_USAGE in first.stdout and FLOWER_USAGE in second.stdout
    assert "cannot take messages (FileNotFoundError" in first.stderr and "fedmnist:" not in second.stderr
    # a server that comes up clears the note, so that the next outage is reported again
    proc = start_server(folder, entry_dir)
    try:
        assert not (folder / NOTED_FILE).exists()
    finally:
        proc.kill()
        proc.wait()
    dead = clientapp(folder, entry_dir, "--help")
    assert dead.returncode == 0 and "cannot take messages (ConnectionRefusedError" in dead.stderr


def test_switched_off_nothing_is_asked(server):
    folder, entry_dir, _ = server
    done = clientapp(folder, entry_dir, "--help", env={WARM_ENV: "0"})
    assert done.returncode == 0 and FLOWER_USAGE in done.stdout and "fedmnist:" not in done.stderr
    assert runs(entry_dir) == 0


def test_a_stuck_server_delays_a_message_at_most_the_handshake_and_never_runs_it_twice(server):
    folder, entry_dir, proc = server
    proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        done = clientapp(folder, entry_dir, "--help")
        took = time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGCONT)
    assert done.returncode == 0 and FLOWER_USAGE in done.stdout, done.stdout + done.stderr
    assert "TimeoutError" in done.stderr, done.stderr
    assert HANDSHAKE_S <= took < HANDSHAKE_S + 30
    time.sleep(1)  # the server now takes the abandoned request: its child must not start
    assert runs(entry_dir) == 0
    assert clientapp(folder, entry_dir, "report").returncode == 0 and runs(entry_dir) == 1


# Another user's process, written from the attacker's side: the socket API, no help from this project.
STRANGER = """
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    sys.exit(print("connect:", type(exc).__name__))
try:
    sock.send(json.dumps({"argv": ["report"], "env": {}, "cwd": "/", "umask": 18, "fds": []}).encode())
    print("reply:", sock.recv(65536).decode())
except (BrokenPipeError, ConnectionResetError):  # the server had answered and closed before it read this
    print("reply: closed by the server")
"""
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")  # one the other user can run


@pytest.mark.skipif(os.getuid() != 0 or SYSTEM_PYTHON is None, reason="needs root and a system python3 (uid 65534)")
def test_another_user_is_refused_by_the_folder_and_by_the_server(server):
    folder, entry_dir, proc = server
    stranger = [SYSTEM_PYTHON, "-c", STRANGER, str(folder / SOCKET_NAME)]
    as_nobody = dict(user=65534, group=65534, cwd="/", env={}, capture_output=True, text=True, timeout=60)
    blocked = subprocess.run(stranger, **as_nobody)
    assert blocked.stdout.strip() == "connect: PermissionError", blocked.stdout + blocked.stderr
    # even with the folder and the socket opened up, the server checks who connects (SO_PEERCRED)
    folder.chmod(0o711)
    (folder / SOCKET_NAME).chmod(0o666)
    asked = subprocess.run(stranger, **as_nobody)
    answers = ("the fork server serves uid 0 only, not 65534", "closed by the server")
    assert any(answer in asked.stdout for answer in answers), asked.stdout + asked.stderr
    assert runs(entry_dir) == 0
    proc.kill()
    assert "refused a request from uid 65534" in proc.communicate()[1]


def test_the_server_refuses_a_folder_others_can_open(tmp_path):
    tmp_path.chmod(0o755)
    with pytest.raises(SystemExit, match="mode 0700 .*chmod 700"):
        check_private(tmp_path)


def test_asking_imports_the_standard_library_only():
    probe = "import sys, launcher.warm_clientapp; print(sorted({m.split('.')[0] for m in sys.modules}))"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert not {"flwr", "torch", "numpy", "task"} & set(eval(found))


def test_children_share_the_preloaded_libraries_but_never_the_apps_modules_nor_cuda(node):
    folder, entry_dir = node
    proc = start_server(folder, entry_dir, preload="numpy,torch,flwr.app,flwr.clientapp")
    try:
        seen = json.loads(clientapp(folder, entry_dir, "report").stdout)
    finally:
        proc.kill()
        proc.wait()
    assert {"torch", "numpy", "flwr"} <= set(seen["modules"])
    assert not {"task", "client_app", "server_app", "partitioning", "run_folder"} & set(seen["modules"])
    assert seen["cuda"] is False


def test_the_wrapper_puts_its_clientapp_first_and_cleans_up(tmp_path):
    probe = f'command -v flwr-clientapp; echo "${SOCKET_ENV}"; test -S "${SOCKET_ENV}" && echo listening; exit 7'
    done = subprocess.run(
        [sys.executable, "-m", "launcher.warm", "sh", "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 7, done.stderr
    shim, socket_path, listening = done.stdout.split()
    assert Path(shim).parent.parent == Path(socket_path).parent and listening == "listening"
    assert _gone_within(Path(socket_path).parent, 10)  # the server leaves with the command, and takes its folder
    off = subprocess.run(
        [sys.executable, "-m", "launcher.warm", "sh", "-c", f'echo "[${SOCKET_ENV}]"'],
        env={**os.environ, WARM_ENV: "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert off.stdout.strip() == "[]" and "forkserver" not in off.stderr


def _gone_within(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not path.exists()


def test_the_wrapper_becomes_the_command_and_its_server_leaves_when_it_is_killed():
    probe = f'echo $$; echo "${SOCKET_ENV}"; exec sleep 60'
    wrapped = [sys.executable, "-m", "launcher.warm", "sh", "-c", probe]
    node = subprocess.Popen(wrapped, stdout=subprocess.PIPE, text=True)
    pid, socket_path = int(node.stdout.readline()), Path(node.stdout.readline().strip())
    assert pid == node.pid  # the command runs in the wrapper's own process: kill and wait reach it
    node.kill()
    node.wait()
    assert _gone_within(socket_path.parent, 10)
