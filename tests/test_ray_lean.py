"""task.ray_lean: the Ray that Flower's simulation starts comes up without its monitor, log monitor
and API server, passes a model in its messages rather than its shared-memory store, and malloc hands
freed buffers back. Checked on the installed Ray's own functions (task/flower_compat.py lists them,
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
ARROW, ARROW_NAME = flower_compat.owner(ray_lean.ARROW_PIECE)


@pytest.fixture
def restored(ray_lean_undone):
    """Ray's own functions put back after the test (install replaces them)."""
    return ray_lean_undone


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


def test_a_ray_of_its_own_passes_objects_in_messages_and_a_joined_cluster_keeps_its_settings(restored):
    restored.setattr(ray_lean, "lean_memory", lambda: True)  # this test process keeps its own malloc
    assert ray_lean.install() is True
    started = RAY_PARAMS(include_dashboard=False, _system_config={})  # ray.init starting a Ray
    assert started._system_config == {"max_direct_call_object_size": ray_lean.INLINE_BYTES}
    chosen = RAY_PARAMS(_system_config={"max_direct_call_object_size": 1000})  # the caller's value wins
    assert chosen._system_config == {"max_direct_call_object_size": 1000}
    joined = RAY_PARAMS(gcs_address="10.0.0.1:6379", _system_config={})  # ray.init joining a cluster
    assert joined._system_config == {}


_MALLOC = """
import ctypes, json, os, sys

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]


def second_block_is_mapped(size):  # glibc maps the first; after its free, the threshold moves
    libc.free(libc.malloc(size))
    block = libc.malloc(size)
    # The chunk's size field, just before the block: glibc's IS_MMAPPED bit (0x2) says whether this very
    # block was mapped on its own (a count of mapped blocks would also see other threads' blocks).
    size_field = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
    libc.free(block)
    return int(bool(size_field & 0x2))


mapped = second_block_is_mapped(8 * 1024 * 1024)  # a message's buffer, before anything else could reuse a free one
if sys.argv[1] == "in-process":
    from task import ray_lean
    assert ray_lean.lean_memory()
print(json.dumps([mapped, os.environ.get("MALLOC_ARENA_MAX"), os.environ.get("MALLOC_MMAP_THRESHOLD_")]))
"""


def _malloc_in_a_fresh_process(how: str, env: dict[str, str]) -> list:
    base = {k: v for k, v in os.environ.items() if k not in ray_lean.MALLOC_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", _MALLOC, how], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_processes_started_with_the_lean_settings_map_big_buffers_so_freeing_them_hands_pages_back():
    # glibc's own: once a mapped 8 MB block is freed, the threshold moves above it, and the next one
    # comes from the heap and stays resident after its free
    assert _malloc_in_a_fresh_process("started", {}) == [0, None, None]
    # started with malloc_env(), as the SuperLink, SuperExec, simulation process and Ray's processes are
    lean = {name: str(value) for name, value in ray_lean.MALLOC_SETTINGS.items()}
    assert _malloc_in_a_fresh_process("started", lean) == [1, "1", "131072"]
    # lean_memory() in a running process passes the settings on to the processes it starts
    assert _malloc_in_a_fresh_process("in-process", {}) == [0, "1", "131072"]


def test_malloc_env_names_the_settings_the_environment_does_not_already_give(monkeypatch):
    for name in ray_lean.MALLOC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert ray_lean.malloc_env() == {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # a value given by the user stays theirs
    assert ray_lean.malloc_env() == {"MALLOC_MMAP_THRESHOLD_": "131072"}


def test_rays_arrow_serializers_are_registered_only_where_pyarrow_is_already_loaded(restored):
    calls = []
    restored.setattr(ARROW, ARROW_NAME, lambda serialization_context: calls.append(serialization_context))
    assert ray_lean.without_arrow_serializers() is True
    assert ray_lean.without_arrow_serializers() is True  # twice wraps once
    register = getattr(ARROW, ARROW_NAME)
    restored.delitem(sys.modules, "pyarrow", raising=False)
    register("context 1")
    assert calls == []  # Ray's own function (which imports pyarrow) was not called
    restored.setitem(sys.modules, "pyarrow", object())
    register("context 2")
    assert calls == ["context 2"]


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
import json, os, sys
import psutil, ray
from task import ray_lean
if sys.argv[1] == "lean":
    assert ray_lean.install()
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


@ray.remote
def shared_memory_after_reading(model):  # a worker handed a model of 1 MB: how much of Ray's store it mapped
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    from ray._private import arrow_serialization  # wrapped by this project's worker program only
    wrapped = hasattr(arrow_serialization._register_custom_datasets_serializers, "__wrapped__")
    program = "ray_worker.py" if wrapped else "Ray's"
    task_dir_on_path = any(os.path.basename(p) == "task" for p in sys.path)
    return (
        int(status["RssShmem"].split()[0]), len(model), os.environ.get("MALLOC_ARENA_MAX"),
        "pyarrow" in sys.modules, program, task_dir_on_path,
    )


worker = ray.get(shared_memory_after_reading.remote(bytes(1024 * 1024)))
processes = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
print(json.dumps({"processes": processes, "worker": worker}))
ray.shutdown()
"""


def _ray_started(how: str) -> dict:
    """The command lines of the processes a fresh Ray starts, and what its worker saw of a 1 MB argument."""
    unset = ("RAY_ADDRESS", ray_lean.DISABLE_ENV, *ray_lean.MALLOC_SETTINGS)
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", _START_RAY, how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_real_ray_started_after_install_runs_lean_and_keeps_a_model_out_of_shared_memory():
    def left_out(cmdlines: list[str]) -> dict[str, bool]:
        return {
            "monitor": any("autoscaler/_private/monitor.py" in c for c in cmdlines),
            "log monitor": any("log_monitor.py" in c for c in cmdlines),
            "API server": any("dashboard/dashboard.py" in c for c in cmdlines),
        }

    full, lean = _ray_started("full"), _ray_started("lean")
    assert left_out(full["processes"]) == {"monitor": True, "log monitor": True, "API server": True}
    assert left_out(lean["processes"]) == {"monitor": False, "log monitor": False, "API server": False}
    assert any("gcs_server" in c for c in lean["processes"]) and any("raylet" in c for c in lean["processes"])
    # Ray's own way: the argument goes through its object store, whose pages the worker keeps resident;
    # Ray's own worker program imports pyarrow (installed with the test extra's mlflow) to deserialize it
    shm_kb, size, arenas, arrow, program, _ = full["worker"]
    assert shm_kb >= 1024 and size == 1024 * 1024 and arenas is None
    assert arrow is True and program == "Ray's"
    shm_kb, size, arenas, arrow, program, task_dir_on_path = lean["worker"]  # in the task's own message
    assert shm_kb < 64 and size == 1024 * 1024 and arenas == "1"
    # this project's worker program ran Ray's worker without pyarrow, and without task/ on its path
    assert arrow is False and program == "ray_worker.py" and task_dir_on_path is False
