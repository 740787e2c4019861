"""deploy/ helpers without a Docker engine: the image's entrypoint checks, the flwr connection
writer, the pinned requirements and the certificate script."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from deploy import connection, entrypoint, register, requirements

ROOT = Path(__file__).resolve().parent.parent
TLS_SH = ROOT / "deploy" / "tls.sh"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run([str(TLS_SH), "--dir", str(folder), "--nodes", "2"], check=True, capture_output=True)
    return folder


def check(argv: list[str]) -> str | None:
    """The entrypoint's one-line complaint about ``argv``, or None."""
    try:
        entrypoint.check(entrypoint.Command.parse(argv))
    except entrypoint.InputError as exc:
        return str(exc)
    return None


# --- the entrypoint: a SuperNode's partition ---------------------------------------------------


@pytest.mark.parametrize(
    ("node_config", "expected"),
    [
        ("partition-id=0 num-partitions=3", None),
        ("partition-id=2 num-partitions=3", None),
        ("partition-id=3 num-partitions=3", "partition-id=3 is out of range for num-partitions=3 (0 to 2)"),
        ("partition-id=-1 num-partitions=3", "partition-id=-1 is out of range"),
        ("num-partitions=3", "has no partition-id"),
        ("partition-id=1", "has no num-partitions"),
        ("partition-id=one num-partitions=3", "partition-id=one is not a whole number"),
        ("partition-id=0 num-partitions=0", "num-partitions=0 must be at least 1"),
        ('partition-id="1" num-partitions=3', None),
    ],
)
def test_a_supernode_must_hold_a_partition_that_exists(node_config, expected):
    problem = check(["flower-supernode", "--insecure", "--node-config", node_config])
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and node_config in problem


def test_a_supernode_without_node_config_is_told_what_to_give():
    problem = check(["flower-supernode", "--insecure", "--superlink", "superlink:8000"])
    assert "no --node-config" in problem and "partition-id=N num-partitions=M" in problem


def test_the_entrypoints_partition_check_is_the_clientapps_and_loads_only_the_standard_library():
    """The entrypoint imports task.node_config (from the project in the image's venv) for a
    SuperNode; it must stay light: no numpy, torch or Flower before Flower starts."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from deploy import entrypoint\n"
        "entrypoint.check(entrypoint.Command.parse(\n"
        "    ['flower-supernode', '--node-config', 'partition-id=0 num-partitions=1']))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'flwr', 'partitioning')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_other_commands_are_not_checked_for_partitions():
    assert check(["flower-superlink", "--insecure"]) is None
    assert check(["python", "-c", "pass"]) is None


# --- the entrypoint: certificates and keys ------------------------------------------------------


def superlink(certs: Path, **files: str) -> list[str]:
    paths = {"ca": "ca.crt", "cert": "superlink.crt", "key": "superlink.key", **files}
    return [
        "flower-superlink",
        "--ssl-ca-certfile",
        str(certs / paths["ca"]),
        "--ssl-certfile",
        str(certs / paths["cert"]),
        f"--ssl-keyfile={certs / paths['key']}",
        "--enable-supernode-auth",
    ]


def supernode(certs: Path, key: str = "supernode-0.key", ca: str = "ca.crt") -> list[str]:
    return [
        "flower-supernode",
        "--root-certificates",
        str(certs / ca),
        "--auth-supernode-private-key",
        str(certs / key),
        "--node-config",
        "partition-id=0 num-partitions=2",
    ]


def test_what_deploy_tls_makes_passes(certs):
    assert check(superlink(certs)) is None
    assert check(supernode(certs)) is None
    assert check(supernode(certs, key="supernode-1.key")) is None


def test_a_missing_file_is_one_line_naming_it(certs):
    problem = check(supernode(certs, key="supernode-7.key"))
    assert (
        problem == f"--auth-supernode-private-key {certs / 'supernode-7.key'}: SuperNode private key not found: "
        f"{entrypoint.HINT}"
    )


def test_a_directory_in_place_of_a_file_says_docker_made_it(certs, tmp_path):
    (tmp_path / "ca.crt").mkdir()  # what docker leaves when the host file of a bind mount is missing
    problem = check(supernode(certs, ca=str(tmp_path / "ca.crt")))
    assert "is a directory" in problem and "missing when the container was created" in problem


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(certs, tmp_path):
    other = tmp_path / "other"
    subprocess.run([str(TLS_SH), "--dir", str(other), "--nodes", "1"], check=True, capture_output=True)
    problem = check(superlink(certs, key=str(other / "superlink.key")))
    assert "does not belong to the certificate" in problem and "superlink.key" in problem
    problem = check(superlink(certs, ca=str(other / "ca.crt")))
    assert "not signed by the CA" in problem
    assert "\n" not in problem


def test_files_that_are_not_what_they_claim_are_refused(certs, tmp_path):
    (tmp_path / "empty.crt").write_text("")
    assert "is empty" in check(supernode(certs, ca=str(tmp_path / "empty.crt")))
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    assert "not a PEM certificate" in check(supernode(certs, ca=str(tmp_path / "junk.crt")))
    # a TLS key is not an SSH key pair
    assert "not an unencrypted OpenSSH private key" in check(supernode(certs, key="superlink.key"))


def test_the_flags_are_rewritten_to_the_copies(certs):
    command = entrypoint.Command.parse(superlink(certs))
    command.replace_file("--ssl-keyfile", "/run/x/key")
    command.replace_file("--ssl-certfile", "/run/x/crt")
    assert "--ssl-keyfile=/run/x/key" in command.argv
    assert command.argv[command.argv.index("--ssl-certfile") + 1] == "/run/x/crt"


def test_the_run_as_user_follows_the_first_non_root_owner(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    if os.getuid() == 0:
        os.chown(mine, 4321, 4322)
        assert entrypoint.target_user(["/nonexistent", "/", str(mine)]) == (4321, 4322)
    else:
        assert entrypoint.target_user([str(mine)]) == (os.getuid(), os.getgid())


def test_the_health_check_fails_when_nothing_answers():
    from launcher.runtime import free_port

    # in a process of its own: run as root, the health check drops privileges
    url = f"http://127.0.0.1:{free_port()}/health"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "entrypoint.py"), "--health", url], capture_output=True, text=True
    )
    assert proc.returncode == 1 and url in proc.stderr


# --- the flwr connection ------------------------------------------------------------------------


def test_the_connection_is_written_without_a_flower_home_and_idempotently(tmp_path, certs):
    home = tmp_path / "no" / "such" / ".flwr"
    path = connection.write_connection("docker", "127.0.0.1:8000", home=home)
    first = path.read_text()
    config = tomllib.loads(first)
    assert config["superlink"]["docker"] == {"address": "127.0.0.1:8000", "insecure": True}
    assert config["superlink"]["default"] == "local"  # Flower's own defaults come first
    connection.write_connection("docker", "127.0.0.1:8000", home=home)
    assert path.read_text() == first  # twice: the same file
    connection.write_connection("docker", "127.0.0.1:8000", root_certificates=certs / "ca.crt", home=home)
    config = tomllib.loads(path.read_text())
    assert config["superlink"]["docker"] == {"address": "127.0.0.1:8000", "root-certificates": str(certs / "ca.crt")}
    assert path.read_text().count("[superlink.docker]") == 1


def test_the_connection_keeps_everything_else_in_the_file(tmp_path):
    home = tmp_path / ".flwr"
    home.mkdir()
    original = (
        '# my notes\n[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "10.0.0.1:8000"\n'
        'root-certificates = "/etc/lab.crt"\n\n[superlink.docker]\naddress = "old:1"\ninsecure = true\n'
        '\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 10\n'
    )
    (home / "config.toml").write_text(original)
    text = connection.write_connection("docker", "127.0.0.1:9000", home=home).read_text()
    assert text.startswith("# my notes\n")
    config = tomllib.loads(text)
    assert config["superlink"]["lab"] == {"address": "10.0.0.1:8000", "root-certificates": "/etc/lab.crt"}
    assert config["superlink"]["local"]["options"] == {"num-supernodes": 10}
    assert config["superlink"]["docker"] == {"address": "127.0.0.1:9000", "insecure": True}
    assert config["superlink"]["default"] == "lab"


@pytest.mark.parametrize(
    "form",
    [
        '[superlink]\ndefault = "docker"  # mine\ndocker = {address = "old:1", insecure = true}\n',
        'superlink.docker.address = "old:1"  # mine\nsuperlink.docker.insecure = true\n',
        'superlink = {default = "docker", docker = {address = "old:1"}}  # mine\n',
        '[superlink.docker]\naddress = "old:1"\n\n[superlink.docker.options]  # mine\nnum-supernodes = 3\n',
    ],
)
def test_a_connection_in_any_toml_form_is_replaced_and_the_rest_kept(tmp_path, form):
    home = tmp_path / ".flwr"
    home.mkdir()
    original = f"# top\n{form}\n[other]  # another tool's\nx = 1\n"
    (home / "config.toml").write_text(original)
    path = connection.write_connection("docker", "127.0.0.1:9000", home=home)
    text = path.read_text()
    config = tomllib.loads(text)
    assert config["superlink"]["docker"] == {
        "address": "127.0.0.1:9000",
        "insecure": True,
    }  # options too: replaced whole
    assert config["other"] == {"x": 1} and text.startswith("# top\n") and "[other]  # another tool's\n" in text
    assert connection.write_connection("docker", "127.0.0.1:9000", home=home).read_text() == text  # twice: the same


def test_a_superlink_that_is_not_a_table_is_one_line_and_left_alone(tmp_path):
    home = tmp_path / ".flwr"
    home.mkdir()
    (home / "config.toml").write_text('superlink = "docker"\n')
    with pytest.raises(connection.ConnectionConfigError, match="not a table"):
        connection.write_connection("docker", "127.0.0.1:8000", home=home)
    assert (home / "config.toml").read_text() == 'superlink = "docker"\n'


def test_bad_connection_input_is_one_line(tmp_path):
    home = tmp_path / ".flwr"
    with pytest.raises(connection.ConnectionConfigError, match="expected HOST:PORT"):
        connection.write_connection("docker", "http://127.0.0.1:8000", home=home)
    with pytest.raises(connection.ConnectionConfigError, match="no such file"):
        connection.write_connection("docker", "127.0.0.1:8000", root_certificates=tmp_path / "ca.crt", home=home)
    home.mkdir()
    (home / "config.toml").write_text("[superlink\n")
    with pytest.raises(connection.ConnectionConfigError, match="is not valid TOML"):
        connection.write_connection("docker", "127.0.0.1:8000", home=home)
    assert (home / "config.toml").read_text() == "[superlink\n"  # left alone


def test_the_probe_says_when_nothing_listens():
    from launcher.runtime import free_port

    ok, message = connection.probe("docker", f"127.0.0.1:{free_port()}", None)
    assert not ok and message.startswith("nothing answers")


# --- pinned requirements and the wheelhouse ----------------------------------------------------


def test_the_lock_pins_every_dependency_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(requirements.pins((ROOT / "deploy" / "requirements.txt").read_text()))
    for requirement in project:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not in deploy/requirements.txt: run deploy/lock.sh"
        exact = re.search(r"==\s*([^,;\s]+)", requirement)
        if exact:
            assert pins[name] == exact.group(1), f"{name}: pyproject says {exact.group(1)}, the lock {pins[name]}"


def test_the_lock_pins_what_the_extras_bring():
    """`flwr[simulation,dp]` needs ray and dp-accounting in the image too (the RDP accountant)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(requirements.pins((ROOT / "deploy" / "requirements.txt").read_text()))
    checked = 0
    for requirement in map(Requirement, project):
        for extra in requirement.extras:
            for needed in map(Requirement, importlib.metadata.requires(requirement.name) or []):
                environment = {"extra": extra, "python_full_version": "3.11.2", "sys_platform": "linux"}
                if needed.marker is not None and needed.marker.evaluate(environment):
                    name = needed.name.lower().replace("_", "-")
                    assert name in pins, (
                        f"{name} ({requirement.name}[{extra}]) is not in deploy/requirements.txt: run deploy/lock.sh"
                    )
                    checked += 1
    assert checked >= 2  # ray and dp-accounting at least


def test_the_cpu_variant_drops_the_cuda_libraries():
    text = (ROOT / "deploy" / "requirements.txt").read_text()
    cpu = dict(requirements.pins(requirements.for_variant(text, "cpu")))
    cuda = dict(requirements.pins(requirements.for_variant(text, "cuda")))
    assert cuda == dict(requirements.pins(text))
    assert cpu["torch"] == cuda["torch"] + "+cpu" and cpu["torchvision"].endswith("+cpu")
    assert not [n for n in cpu if n.startswith("nvidia-") or n == "triton"]
    assert set(cpu) < set(cuda)
    with pytest.raises(ValueError):
        requirements.for_variant(text, "rocm")


def test_missing_wheels_are_listed(tmp_path):
    (tmp_path / "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl").write_bytes(b"")
    req = tmp_path / "r.txt"
    req.write_text("numpy==1.26.4\ntorch==2.14.1\n")
    assert requirements.missing("cuda", str(tmp_path), [str(req)]) == ["torch==2.14.1"]
    assert requirements.missing("cpu", str(tmp_path), [str(req)]) == ["torch==2.14.1+cpu"]


# --- deploy/tls.sh and deploy/register.py -------------------------------------------------------


def test_tls_sh_is_idempotent_and_checks_names_and_pairs(certs, tmp_path):
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    again = subprocess.run([str(TLS_SH), "--dir", str(certs), "--nodes", "2"], capture_output=True, text=True)
    assert again.returncode == 0
    assert {p.name: p.read_bytes() for p in certs.iterdir()} == before  # nothing made twice
    sans = subprocess.run(
        ["openssl", "x509", "-in", str(certs / "superlink.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:superlink" in sans and "DNS:localhost" in sans and "IP Address:127.0.0.1" in sans
    assert oct((certs / "supernode-0.key").stat().st_mode & 0o777) == "0o600"
    assert (certs / "supernode-0.key.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    # a key pair that does not match, and a node without a key: one line each, naming the file
    (certs / "supernode-1.key.pub").write_bytes((certs / "supernode-0.key.pub").read_bytes())
    checked = subprocess.run(
        [str(TLS_SH), "--dir", str(certs), "--nodes", "3", "--check"], capture_output=True, text=True
    )
    assert checked.returncode == 1
    lines = checked.stderr.strip().splitlines()
    assert len(lines) == 2
    assert f"{certs}/supernode-1.key.pub is not the public half of {certs}/supernode-1.key" in lines[0]
    assert f"{certs}/supernode-2.key is missing" in lines[1]
    (certs / "supernode-1.key.pub").write_bytes(before["supernode-1.key.pub"])


def test_tls_sh_adds_a_name_to_the_certificate_when_asked(tmp_path):
    folder = tmp_path / "c"
    subprocess.run([str(TLS_SH), "--dir", str(folder), "--nodes", "1"], check=True, capture_output=True)
    ca = (folder / "ca.crt").read_bytes()
    subprocess.run(
        [str(TLS_SH), "--dir", str(folder), "--nodes", "1", "--san", "superlink.example.org", "--san", "10.1.2.3"],
        check=True,
        capture_output=True,
    )
    sans = subprocess.run(
        ["openssl", "x509", "-in", str(folder / "superlink.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:superlink.example.org" in sans and "IP Address:10.1.2.3" in sans
    assert (folder / "ca.crt").read_bytes() == ca  # same CA: the nodes need nothing new


def test_register_finds_the_node_keys_in_order(tmp_path):
    for i in (10, 2, 0):
        (tmp_path / f"supernode-{i}.key.pub").write_text("x")
    (tmp_path / "stranger.key.pub").write_text("x")
    assert [p.name for p in register.default_keys(tmp_path)] == [
        "supernode-0.key.pub",
        "supernode-2.key.pub",
        "supernode-10.key.pub",
    ]
    ok, message = register.register("docker", tmp_path / "supernode-5.key.pub")
    assert not ok and "no such public key file" in message


def test_the_entrypoint_says_where_a_supernode_connects(certs):
    line = entrypoint.announce(entrypoint.Command.parse(supernode(certs) + ["--superlink", "superlink:8000"]))
    assert "superlink:8000" in line and "TLS, authenticated" in line and "partition-id=0 num-partitions=2" in line
    line = entrypoint.announce(entrypoint.Command.parse(["flower-supernode", "--insecure", "--node-config", "x=1"]))
    assert "127.0.0.1:8000 (no TLS)" in line
