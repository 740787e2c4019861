"""Uploaded code looking for secrets: what a ServerApp and a ClientApp can read where they run.

The ServerApp looks around its own container, asks every node's ClientApp to do the same,
and writes everything to ``~/fedmnist-runs/snoop/findings.json`` (the outputs folder on the
host in this project's deployments).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

# Where this project's containers keep keys and state, whichever container this is.
KNOWN = [
    "/certs/superlink.key",
    "/certs/supernode.key",
    "/state/state.db",
    "/run/fedmnist-secrets",
]
# Any file with one of these endings anywhere outside the system's and Python's own trees.
SECRET_SUFFIXES = (".key", ".db", ".secret", ".pem")
SKIP = {"/proc", "/sys", "/dev", "/usr", "/opt/venv", "/opt/mnist", "/var/lib/dpkg", "/etc/ssl"}


def readable(path: str) -> str:
    try:
        if os.path.isdir(path):
            return "listable: " + ",".join(sorted(os.listdir(path))[:20])
        with open(path, "rb") as f:
            f.read(1)
        return "readable"
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"denied ({exc.strerror})"


def look(top: str = "/") -> dict[str, str]:
    found = {f"known {p}": readable(p) for p in KNOWN}
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
        for name in files:
            if name.endswith(SECRET_SUFFIXES):
                path = os.path.join(root, name)
                found[f"found {path}"] = readable(path)
    found["host"] = socket.gethostname()
    found["uid"] = str(os.getuid())
    return found


client = ClientApp()


@client.query()
def query(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"found": ConfigRecord(look())}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    findings = {"serverapp": look(), "clientapps": []}
    nodes = list(grid.get_node_ids())
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    for reply in grid.send_and_receive(messages, timeout=300):
        if reply.has_content():
            findings["clientapps"].append(dict(reply.content["found"]))
        else:
            findings["clientapps"].append({"error": str(reply.error)})
    out = Path.home() / "fedmnist-runs" / "snoop"
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.json").write_text(json.dumps(findings, indent=2) + "\n")
