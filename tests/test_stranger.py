"""The two probes of the deployment's security, checked where they can be without Docker:
deploy/stranger.py reads Flower's CLI output right, and the snooping app finds what it should.
tests/test_containers.py points both at the real deployment."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from deploy import stranger

ROOT = Path(__file__).resolve().parent.parent


def _snoop():
    spec = importlib.util.spec_from_file_location("snoop", ROOT / "tests" / "apps" / "snoop" / "snoop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "output, refused",
    [
        ("Client error '403 Forbidden' for url 'https://h:8443/v1/control/list-runs'", True),
        ('{"success": false, "error-message": "Client error \'403 Forbidden\' for url"}', True),
        ("Connection to the SuperLink is unavailable", True),
        # An answer from the Control API itself, even an error, means the door was open.
        ("[code: 16] Run ID not found.", False),
        ('{"success": true, "runs": []}', False),
        ("SuperNode 42 registered successfully.", False),
    ],
)
def test_only_a_403_or_no_connection_counts_as_refused(output, refused):
    assert stranger._cli_attempt("x", output).refused is refused


def test_a_listener_that_answers_is_reported_and_fails_the_check(capsys, tmp_path, monkeypatch):
    ca = tmp_path / "ca.crt"
    ca.write_text("-")
    monkeypatch.setattr(
        stranger,
        "attempts",
        lambda *a: [stranger.Attempt("list runs", False, "{}"), stranger.Attempt("GET /docs", True, "HTTP 403")],
    )
    assert stranger.main(["h:1", "--ca", str(ca), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["refused"] for line in lines] == [False, True]


def test_a_closed_address_is_closed_and_an_open_one_is_not():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert stranger._closed(f"127.0.0.1:{port}").refused is False
    assert stranger._closed(f"127.0.0.1:{port}").refused is True


def test_the_fresh_key_is_an_openssh_ecdsa_p384_public_key():
    assert stranger.fresh_public_key().startswith(b"ecdsa-sha2-nistp384 AAAA")


def test_the_snooping_app_reports_a_key_it_can_read_and_one_it_cannot(tmp_path):
    snoop = _snoop()
    (tmp_path / "node.key").write_text("secret")
    (tmp_path / "state.db").write_text("state")
    (tmp_path / "notes.txt").write_text("not a secret")
    locked = tmp_path / "locked.key"
    locked.write_text("secret")
    locked.chmod(0)
    found = snoop.look(str(tmp_path))
    assert found[f"found {tmp_path / 'node.key'}"] == "readable"
    assert found[f"found {tmp_path / 'state.db'}"] == "readable"
    assert f"found {tmp_path / 'notes.txt'}" not in found
    expected = "readable" if os.getuid() == 0 else "denied (Permission denied)"  # root reads anything
    assert found[f"found {locked}"] == expected
