"""task.ray_lean: the Ray that Flower's simulation starts comes up without its monitor, log monitor
and API server. Checked on the installed Ray's own functions (task/flower_compat.py lists them,
tests/test_flower_compat.py checks their parameters); the slow test starts a real Ray."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from task import flower_compat, ray_lean

ROOT = Path(__file__).resolve().parent.parent
(RAY_PARAMS, _), (NODE, _) = (flower_compat.owner(name) for name in ray_lean.PIECES)


@pytest.fixture
def restored(monkeypatch):
    """Ray's own functions put back after the test (install replaces them)."""
    monkeypatch.setattr(RAY_PARAMS, "__init__", RAY_PARAMS.__init__)
    monkeypatch.setattr(NODE, "start_api_server", NODE.start_api_server)
    monkeypatch.delenv(ray_lean.DISABLE_ENV, raising=False)
    return monkeypatch


class _NodeUpToItsLogFiles:
    """Ray's start_api_server asks its node for log file names first: stop it there, proving it ran."""

    def get_log_file_names(self, *args, **kwargs):
        raise LookupError("Ray's start_api_server ran")


def test_install_wraps_rays_own_functions_and_keeps_their_parameters(restored, caplog):
    init, start = RAY_PARAMS.__init__, NODE.start_api_server
    assert ray_lean.install() is True
    assert ray_lean.install() is True  # twice is harmless, and said once
    assert caplog.text.count("Ray starts without its monitor, log monitor and API server") == 1
    assert RAY_PARAMS.__init__.__wrapped__ is init and NODE.start_api_server.__wrapped__ is start
    assert inspect.signature(NODE.start_api_server) == inspect.signature(start)

    params = RAY_PARAMS(include_dashboard=False)  # Ray's own RayParams, as ray.init builds it
    assert params.no_monitor is True and params.include_log_monitor is False

    # Without the dashboard the API server is skipped: Ray's function would fail on this node.
    assert NODE.start_api_server(object(), include_dashboard=False, raise_on_failure=False) is None
    assert NODE.start_api_server(object(), include_dashboard=None, raise_on_failure=False) is None
    with pytest.raises(LookupError, match="start_api_server ran"):  # asked for: Ray's own runs
        NODE.start_api_server(_NodeUpToItsLogFiles(), include_dashboard=True, raise_on_failure=True)


def test_the_environment_keeps_rays_own_set_and_the_log_says_so(restored, caplog):
    restored.setenv(ray_lean.DISABLE_ENV, "1")
    assert ray_lean.install() is False
    assert RAY_PARAMS().include_log_monitor is None
    assert f"Ray starts with its monitor, log monitor and API server ({ray_lean.DISABLE_ENV}=1)" in caplog.text


def _only_warning(caplog) -> str:
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    return record.getMessage()


def test_another_ray_version_is_left_alone_with_a_warning_naming_the_pieces(restored, caplog):
    restored.setitem(flower_compat.CHECKED_WITH, "ray", "2.54.0")
    assert ray_lean.install() is False
    assert RAY_PARAMS().no_monitor is False
    assert f"Ray {ray.__version__} is not the 2.54.0 that piece(s) ray_params_init, start_api_server" in _only_warning(
        caplog
    )


def test_a_ray_that_renamed_a_parameter_is_left_alone_with_a_warning_naming_the_piece(restored, caplog):
    def start_api_server(self, *, with_dashboard, raise_on_failure):  # what a later Ray might have
        pass

    restored.setattr(NODE, "start_api_server", start_api_server)
    assert ray_lean.install() is False
    assert NODE.start_api_server is start_api_server and RAY_PARAMS().no_monitor is False
    message = _only_warning(caplog)
    assert "piece 'start_api_server'" in message and "without the parameter(s) include_dashboard" in message


def test_a_ray_already_running_is_left_alone_with_a_warning(restored, caplog):
    restored.setattr(ray, "is_initialized", lambda: True)
    assert ray_lean.install() is False
    assert "Ray was already running in this process" in _only_warning(caplog)


_START_RAY = """
import json, sys
import psutil, ray
from task import ray_lean
if sys.argv[1] == "lean":
    assert ray_lean.install()
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
print(json.dumps([" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]))
ray.shutdown()
"""


def _processes_ray_starts(how: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", ray_lean.DISABLE_ENV)}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", _START_RAY, how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_real_ray_started_after_install_has_no_monitor_log_monitor_or_api_server():
    def left_out(cmdlines: list[str]) -> dict[str, bool]:
        return {
            "monitor": any("autoscaler/_private/monitor.py" in c for c in cmdlines),
            "log monitor": any("log_monitor.py" in c for c in cmdlines),
            "API server": any("dashboard/dashboard.py" in c for c in cmdlines),
        }

    assert left_out(_processes_ray_starts("full")) == {"monitor": True, "log monitor": True, "API server": True}
    lean = _processes_ray_starts("lean")
    assert left_out(lean) == {"monitor": False, "log monitor": False, "API server": False}
    assert any("gcs_server" in c for c in lean) and any("raylet" in c for c in lean)  # what Ray needs stays
