"""Warm ClientApp processes on Flower's real deployment runtime (loopback, no Docker): the same
bytes as Flower's plain process per message, two app versions in a row each running its own
code, and a run that completes when its nodes' fork servers are killed halfway."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest

import run_folder as rf
from launcher.flower_home import FlowerHome, flower_home
from launcher.flwr_cli import flwr_run
from launcher.processes import descendants
from launcher.runtime import start_superlink, start_supernode

pytestmark = pytest.mark.slow

RUN = {"num-server-rounds": 2, "fraction-train": 1.0, "fraction-evaluate": 0.0, "local-epochs": 1}
FALLBACK_NOTE = "cannot take messages"

VERSIONED_APP = {
    "pyproject.toml": """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "versioned"
version = "1.0.0"
dependencies = ["flwr"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedavg-mnist"

[tool.flwr.app.components]
serverapp = "versioned.app:server"
clientapp = "versioned.app:client"

[tool.flwr.app.config]
out = ""
""",
    "versioned/__init__.py": "",
    "versioned/app.py": """import json, os, sys, time
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from versioned.code import VERSION

client = ClientApp()

@client.query()
def query(msg: Message, context: Context) -> Message:
    parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode()
    found = {"version": VERSION, "forked": "launcher.forkserver" in parent, "torch": "torch" in sys.modules}
    return Message(RecordDict({"found": ConfigRecord(found)}), reply_to=msg)

server = ServerApp()

@server.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.monotonic() + 120
    while len(nodes := list(grid.get_node_ids())) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = [dict(r.content["found"]) for r in grid.send_and_receive(messages, timeout=300) if r.has_content()]
    Path(context.run_config["out"]).write_text(json.dumps(replies))
""",
}


def write_app(folder: Path, version: str) -> Path:
    for name, text in VERSIONED_APP.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "versioned" / "code.py").write_text(f"VERSION = {version!r}\n")
    return folder


class ClientAppProcesses(threading.Thread):
    """The processes under ``home``'s that ran a message: pid -> started by a fork server. The
    ``flwr-clientapp`` that asks a fork server renames itself once it knows it only waits."""

    def __init__(self, home: FlowerHome) -> None:
        super().__init__(daemon=True)
        self.home, self.last, self.done = home, {}, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            for pid in descendants(*(p.pid for p in self.home.processes)):
                try:
                    process = psutil.Process(pid)
                    forked = "launcher.forkserver" in " ".join(process.parent().cmdline())
                    self.last[pid] = (process.name(), forked)
                except (psutil.Error, AttributeError):
                    continue

    @property
    def seen(self) -> dict[int, bool]:
        return {pid: forked for pid, (name, forked) in self.last.items() if name == "flwr-clientapp"}


def fork_servers(home: FlowerHome) -> list[psutil.Process]:
    """The nodes' fork servers (not their waiters or children: those are the servers' own children)."""
    found = []
    for pid in descendants(*(p.pid for p in home.processes)):
        try:
            process = psutil.Process(pid)
            if "launcher.forkserver" in " ".join(process.cmdline()) and "flower-supernode" in " ".join(
                process.parent().cmdline()
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


def deployed(home: FlowerHome, warm: bool) -> str:
    address = start_superlink(home, simulation=False)
    home.add_connection("loopback", address)
    for i in range(2):
        start_supernode(home, address, partition_id=i, num_partitions=2, warm=warm)
    return "loopback"


def strip(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("wall-time-s", "elapsed-s")} for r in rounds]


def test_warm_nodes_give_the_same_bytes_run_each_apps_own_code_and_survive_their_fork_server(tmp_path):
    with flower_home() as home:
        plain_config = {**RUN, "output-dir": str(tmp_path), "run-name": "plain"}
        flwr_run(home, deployed(home, warm=False), plain_config, echo=False)
    plain = rf.read_completed_run(tmp_path / "plain")

    with flower_home() as home:
        connection = deployed(home, warm=True)
        watch = ClientAppProcesses(home)
        watch.start()
        # two versions of one app in a row, only their code differs: each node runs each version's own
        for version in ("one", "two"):
            out = tmp_path / f"versioned-{version}.json"
            app = write_app(tmp_path / f"app-{version}", version)
            flwr_run(home, connection, {"out": str(out)}, app_dir=app, echo=False, timeout=600)
            replies = json.loads(out.read_text())
            assert [r["version"] for r in replies] == [version, version]
            assert all(r["forked"] and r["torch"] for r in replies)  # in a fork server's child, torch preloaded
        flwr_run(home, connection, {**RUN, "output-dir": str(tmp_path), "run-name": "warm"}, echo=False)
        warm_processes = dict(watch.seen)
        assert warm_processes and all(warm_processes.values())

        # the fork servers killed once round 1 is in: the run completes on Flower's plain processes
        killed: list[int] = []

        def kill_after_round_1() -> None:
            while not killed:
                try:
                    if len(rf.RunFolder(tmp_path / "killed").history()["rounds"]) >= 2:
                        for server in fork_servers(home):
                            server.kill()
                            killed.append(server.pid)
                except (rf.RunFolderError, FileNotFoundError, ValueError):
                    pass
                time.sleep(0.1)

        killer = threading.Thread(target=kill_after_round_1, daemon=True)
        killer.start()
        flwr_run(home, connection, {**RUN, "output-dir": str(tmp_path), "run-name": "killed"}, echo=False)
        watch.done.set()
        assert len(killed) == 2
        after = {pid: forked for pid, forked in watch.seen.items() if pid not in warm_processes}
        assert not all(after.values())  # round 2 ran on plain processes
        logs = [home.log_tail(f"supernode-{i}", lines=100_000) for i in range(2)]
        assert [log.count(FALLBACK_NOTE) for log in logs] == [1, 1]

    for name in ("warm", "killed"):
        run = rf.read_completed_run(tmp_path / name)
        assert run.folder.file(rf.MODEL).read_bytes() == plain.folder.file(rf.MODEL).read_bytes()
        assert strip(run.rounds) == strip(plain.rounds)
