"""The Ray that Flower 1.41's simulation starts for a run, without the processes it does not use.

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

:func:`install` leaves them out: in the process where Flower's simulation runtime is loaded, for
the Ray minor version it was checked against (``SUPPORTED``), it sets ``no_monitor`` and
``include_log_monitor=False`` on the parameters of the Ray that ``ray.init`` starts, and skips the
API server unless the dashboard is asked for. Joining an existing cluster (``RAY_ADDRESS``,
``--ray-address``) starts none of them anyway. ``FEDMNIST_RAY_FULL=1`` in the environment keeps
Ray's own set (``--verbose`` in the launcher sets it, so that the workers' output reaches
``flower.log`` again). Like :mod:`client_app.simulation_queue`, the client app calls
:func:`install` when it is imported, which Flower's simulation does before it starts Ray.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from logging import INFO

DISABLE_ENV = "FEDMNIST_RAY_FULL"  # =1: Ray's own set of processes
SUPPORTED = ("2.55.",)  # the Ray versions whose internals this was checked against
VCE_MODULE = "flwr.server.superlink.fleet.vce.vce_api"  # Flower's simulation runtime
_MARK = "_fedmnist_lean"


def install() -> bool:
    """Leave Ray's monitor, log monitor and API server out of the Ray this process starts, if
    it is Flower's simulation process and its Ray is a version this was checked against.
    True if in place."""
    if VCE_MODULE not in sys.modules or os.environ.get(DISABLE_ENV) == "1":
        return False
    try:
        import ray
        from ray._private import node, parameter
    except ImportError:
        return False
    if not ray.__version__.startswith(SUPPORTED) or ray.is_initialized():
        return False
    params_init = parameter.RayParams.__init__
    start_api_server = node.Node.start_api_server
    if getattr(params_init, _MARK, False):
        return True
    expected = {"no_monitor", "include_log_monitor"}
    if not expected <= set(inspect.signature(params_init).parameters):
        return False
    if list(inspect.signature(start_api_server).parameters) != ["self", "include_dashboard", "raise_on_failure"]:
        return False

    @functools.wraps(params_init)
    def lean_params(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["no_monitor"] = True
        kwargs["include_log_monitor"] = False
        params_init(self, *args, **kwargs)

    @functools.wraps(start_api_server)
    def api_server_if_dashboard(self, *, include_dashboard, raise_on_failure):  # type: ignore[no-untyped-def]
        if include_dashboard:
            start_api_server(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    setattr(lean_params, _MARK, True)
    parameter.RayParams.__init__ = lean_params
    node.Node.start_api_server = api_server_if_dashboard
    from flwr.common import log

    log(INFO, "Simulation: Ray starts without its monitor, log monitor and API server (client_app.ray_lean)")
    return True
