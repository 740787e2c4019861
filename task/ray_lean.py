"""The Ray that Flower 1.41's simulation starts for a run, without the processes it does not use,
and the memory that its processes keep resident for no use.

``ray.init()`` on a machine with no Ray cluster starts, next to the two it needs (``gcs_server``
and ``raylet``, which starts the runtime-environment and dashboard agents the workers rely on),
three Python processes that a simulation never talks to: the autoscaler's monitor (it scales
clusters that have an autoscaler), the log monitor (it copies the workers' stdout and stderr
into the driver's, that is into ``flower.log``; the ClientApp's errors reach the ServerApp in its
replies either way, and the workers' output stays in Ray's session folder) and the dashboard's
API server (``include_dashboard=False``, which Flower sets, only drops the web pages from it).
Together they hold about 0.27 GB of memory, take about 3 CPU seconds to start on a 2-core
machine, and wake up for as long as the run lasts. Flower's ``--federation-config`` passes only
``num_cpus``, ``num_gpus``, ``logging_level`` and ``log_to_driver`` to ``ray.init``, and
``ray.init`` itself has no switch for any of the three (``ray start`` has, for a cluster of its own).

:func:`install` leaves them out of the Ray this process starts next, for the Ray minor version it was
checked against: it sets ``no_monitor`` and ``include_log_monitor=False`` on the parameters of the Ray
that ``ray.init`` starts, and skips the API server unless the dashboard is asked for. On another Ray,
or once Ray has started, it changes nothing and says so in the log. Joining an existing cluster
(``RAY_ADDRESS``, ``--ray-address``) starts none of them anyway. ``FEDMNIST_RAY_FULL=1`` in the
environment keeps Ray's own set (``--verbose`` in the launcher sets it, so that the workers' output
reaches ``flower.log`` again). :mod:`task.simulation_patches` calls :func:`install` in Flower's
simulation process, before Flower starts Ray.

The same wrapper passes the model to the workers and back in Ray's messages rather than through its
shared-memory object store, and keeps glibc from holding on to freed memory (:func:`lean_memory`):

- Ray puts every task argument or result above 100 KB (``max_direct_call_object_size``) into its object
  store, a shared-memory file that the simulation process and each worker map. The MLP's 0.8 MB
  messages go that way twice per client, and every page of the store that a process once read or
  wrote stays in its resident set: 55-80 MB in each of the three PyTorch processes by the end of a
  1,000-client run. Up to :data:`INLINE_BYTES` an object now travels inside Ray's own request and is
  freed with it; a bigger model still uses the store, and a cluster that is joined keeps its own setting.
- glibc's ``malloc`` gives threads that allocate at the same time arenas of their own (up to eight
  per core) and, after the first large block is freed, raises the size above which it maps blocks
  on their own (up to 32 MB), so that the messages' buffers are cut from the arenas and their pages
  stay resident once freed. One arena and a fixed 128 KB threshold (:data:`MALLOC_SETTINGS`) hand
  those pages back on ``free``. glibc reads them once, when a process starts: the launcher starts the
  SuperLink, and so the SuperExec and the simulation process, with them (:func:`malloc_env`), and
  :func:`lean_memory` sets them with ``mallopt`` in a simulation process started without them and in
  the environment of the Ray processes it starts (a value already in the environment is kept).

- Ray imports ``pyarrow`` (when installed: the ``test`` extra's ``mlflow`` brings it) in every process
  that deserializes an object, to register Ray Data's Arrow serializers: about 28 MB resident in each
  of the three PyTorch processes, for types no message of a simulation holds. The simulation process
  registers them only where ``pyarrow`` is already loaded (:func:`without_arrow_serializers`), and the
  workers run :mod:`task.ray_worker`, Ray's own worker after the same step.

The functions wrapped here and Ray's worker program are not Ray's public API: they are listed in
:mod:`task.flower_compat` (pieces ``ray_params_init``, ``start_api_server``, ``arrow_serializers``
and ``ray_default_worker``), where tests/test_flower_compat.py resolves them against the installed Ray.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import inspect
import os
import sys
from logging import INFO, WARNING
from pathlib import Path

from flwr.common import log

from task import flower_compat

DISABLE_ENV = "FEDMNIST_RAY_FULL"  # =1: Ray's own set of processes and settings, glibc's malloc settings
PIECES = ("ray_params_init", "start_api_server")  # the pieces of task.flower_compat wrapped here
ARROW_PIECE, WORKER_PIECE = "arrow_serializers", "ray_default_worker"
WORKER_PROGRAM = Path(__file__).with_name("ray_worker.py")
_MARK = "_fedmnist_lean"
INLINE_BYTES = 8 * 1024 * 1024  # objects up to this size travel in Ray's messages (Ray's own limit per task: 10 MB)
SYSTEM_CONFIG = {"max_direct_call_object_size": INLINE_BYTES}
# glibc's environment names, and mallopt's parameter numbers (malloc.h) for this process
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": 1, "MALLOC_MMAP_THRESHOLD_": 128 * 1024}
_MALLOPT = {"MALLOC_ARENA_MAX": -8, "MALLOC_MMAP_THRESHOLD_": -3}
_KEPT = "Simulation: Ray starts with its monitor, log monitor and API server"


def install() -> bool:
    """Leave Ray's monitor, log monitor and API server out of the Ray this process starts next, pass
    its small objects in messages, set malloc (:func:`lean_memory`); log once what was done. True if in place."""
    import ray

    try:
        (params_class, init), (node_class, start) = (flower_compat.owner(name) for name in PIECES)
    except flower_compat.MissingFlowerPiece as exc:
        log(WARNING, "%s: %s", _KEPT, exc)
        return False
    if getattr(getattr(params_class, init), _MARK, False):
        return True
    if os.environ.get(DISABLE_ENV) == "1":
        log(INFO, "%s (%s=1)", _KEPT, DISABLE_ENV)
        return False
    wrong = flower_compat.version_mismatch("ray", *PIECES)
    if wrong or ray.is_initialized():
        log(WARNING, "%s: %s", _KEPT, wrong or "Ray was already running in this process")
        return False
    lean_params, api_server_if_dashboard = _lean(getattr(params_class, init), getattr(node_class, start))
    setattr(params_class, init, lean_params)
    setattr(node_class, start, api_server_if_dashboard)
    lean_memory()
    without_arrow_serializers()
    log(
        INFO,
        "Simulation: Ray starts without its monitor, log monitor and API server and its workers without "
        "pyarrow, passes objects up to %d MB in its messages, and malloc runs with %s (task/ray_lean.py)",
        INLINE_BYTES >> 20,
        ", ".join(f"{k}={v}" for k, v in MALLOC_SETTINGS.items()),
    )
    return True


def lean_memory() -> bool:
    """:data:`MALLOC_SETTINGS` for this process (``mallopt``) and the processes it starts next (their
    environment), each unless the environment already names it. False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, and none of glibc's arenas
        return False
    for name, value in malloc_env().items():  # a value given at start is in force here already (glibc read it)
        os.environ[name] = value
        mallopt(_MALLOPT[name], MALLOC_SETTINGS[name])
    return True


def malloc_env() -> dict[str, str]:
    """:data:`MALLOC_SETTINGS` as environment variables, less those the environment already names: for
    processes started with them from the first allocation (glibc reads them once, at start)."""
    return {name: str(value) for name, value in MALLOC_SETTINGS.items() if name not in os.environ}


def without_arrow_serializers() -> bool:
    """Ray registers its Arrow serializers in this process only if ``pyarrow`` is already loaded, instead of
    importing it (piece ``arrow_serializers``). False, and Ray's own way kept, on a Ray this was not checked with."""
    try:
        holder, name = flower_compat.owner(ARROW_PIECE)
    except flower_compat.MissingFlowerPiece:
        return False
    register = getattr(holder, name)
    if getattr(register, _MARK, False) or flower_compat.version_mismatch("ray", ARROW_PIECE):
        return getattr(register, _MARK, False)

    @functools.wraps(register)
    def if_arrow_loaded(serialization_context):  # type: ignore[no-untyped-def]
        if "pyarrow" in sys.modules:
            register(serialization_context)

    setattr(if_arrow_loaded, _MARK, True)
    setattr(holder, name, if_arrow_loaded)
    return True


def default_worker_path() -> str:
    """Where Ray's own worker program is (piece ``ray_default_worker``), found without running it."""
    spec = importlib.util.find_spec(flower_compat.PIECES[WORKER_PIECE].module)
    if spec is None or spec.origin is None:
        raise flower_compat.MissingFlowerPiece(f"Ray has no {flower_compat.PIECES[WORKER_PIECE].module}")
    return spec.origin


def _lean(params_init, start_api_server):  # type: ignore[no-untyped-def]
    """The two wrappers: Ray's own functions, called with the same arguments, less what is left out."""

    @functools.wraps(params_init)
    def lean_params(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["no_monitor"] = True
        kwargs["include_log_monitor"] = False
        if not kwargs.get("gcs_address"):  # a Ray of our own: a cluster we join keeps its settings
            kwargs["_system_config"] = {**SYSTEM_CONFIG, **(kwargs.get("_system_config") or {})}
            kwargs.setdefault("worker_path", str(WORKER_PROGRAM))
        params_init(self, *args, **kwargs)

    api_server_args = inspect.signature(start_api_server)

    @functools.wraps(start_api_server)
    def api_server_if_dashboard(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if api_server_args.bind(self, *args, **kwargs).arguments.get("include_dashboard"):
            return start_api_server(self, *args, **kwargs)
        return None

    setattr(lean_params, _MARK, True)
    return lean_params, api_server_if_dashboard
