"""Every part of Flower, and of the Ray its simulation runs on, that this project uses but that is
not their public API, in one place.

Public API here means what Flower documents and exports in ``__all__``: ``flwr.app``,
``flwr.serverapp`` (also the privacy accountants: ``RdpAccountant``, ``PrivacyConfig``, ...),
``flwr.serverapp.strategy``, ``flwr.clientapp``, ``flwr.clientapp.mod``, ``flwr.client``
(``NumPyClient``), ``flwr.common`` (``log``, ``now``; import them from ``flwr.common``, not
from ``flwr.common.logger`` or ``flwr.supercore``), ``flwr.__version__``, and the ``flwr`` /
``flower-*`` command lines and their ``FLWR_*`` environment variables. The rest of the project
imports only those, and this module. Ray's public API is what ``ray`` documents; nothing under
``ray._private``.

Everything else is listed here: :data:`PIECES` (a module or an attribute of one, with why it is
needed and who uses it) and :data:`ATTRIBUTES` (attributes read or written by name on Flower's
objects). Use a piece by its name::

    from task.flower_compat import add_exit_handler

This module imports only the standard library: a piece's module is imported when the piece is
first asked for (so the launcher and the deploy scripts import this cheaply, and the simulation
runtime is never loaded by asking whether it is loaded, see :func:`loaded`). A piece the
installed Flower or Ray no longer has, or no longer takes the parameters listed, fails with
:class:`MissingFlowerPiece`, which names the piece and why it is needed.
``tests/test_flower_compat.py`` resolves every piece and checks every attribute on real Flower
and Ray objects: run it first after changing the ``flwr`` or ``ray`` pin.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# The releases every piece below was checked against, by the distribution that holds the piece.
CHECKED_WITH = {"flwr": "1.41.0", "ray": "2.55.1"}
_NAMES = {"flwr": "Flower", "ray": "Ray"}


@dataclass(frozen=True)
class Piece:
    """``module.attr`` of Flower or Ray (the module itself when ``attr`` is None; ``attr`` may be
    ``Class.method``)."""

    module: str
    attr: str | None
    why: str
    users: tuple[str, ...]
    # Parameters this project passes, in their order (checked on every resolve; None: not a call).
    params: tuple[str, ...] | None = None
    # True when this project puts its own function in the piece's place, to be called as the
    # original is: then ``params`` must be all of its parameters, not only some.
    replaced: bool = False

    @property
    def path(self) -> str:
        return self.module if self.attr is None else f"{self.module}.{self.attr}"

    @property
    def distribution(self) -> str:
        """``flwr`` or ``ray``: whose piece it is."""
        return self.module.split(".")[0]


@dataclass(frozen=True)
class Attributes:
    """Attributes of instances of Flower's class ``module.cls`` read or written by name."""

    module: str
    cls: str
    names: tuple[str, ...]
    why: str
    users: tuple[str, ...]


_VCE_API = "flwr.server.superlink.fleet.vce.vce_api"  # the simulation's runtime (Ray backend)
_TEST_MESSAGES = (
    "tests/test_client_app.py",
    "tests/test_server_app.py",
    "tests/test_strategy.py",
    "tests/test_search_noniid.py",
    "tests/test_simulation_queue.py",
    "tests/test_flower_compat.py",
)
_TEST_LINKSTATE = (
    "tests/test_simulation_queue.py",
    "tests/test_simulation_patches.py",
    "tests/test_flower_compat.py",
)
_LINKSTATE_WHY = "the test builds Flower's own in-memory SuperLink state as the simulation does, to feed it messages"

_LOG_USERS = ("launcher/log_stream.py", "tests/test_log_stream.py")
_LOG_WHY = (
    "the Control API's client and its log request, which `flwr log --stream` uses; the launcher follows a "
    "run's log with them in its own process instead of keeping a `flwr log` process (about 100 MB) beside it"
)
_VERSION_HEADERS_WHY = (
    "the headers, and their values, by which `flwr` tells the SuperLink its Flower version; the launcher "
    "sends them when it follows a log itself (Flower's interceptor that sends them imports its web server)"
)

PIECES: dict[str, Piece] = {
    # ---- used by the app, the launcher and the deploy scripts ----
    "add_exit_handler": Piece(
        "flwr.supercore.exit",
        "add_exit_handler",
        "`flwr stop`, Ctrl-C or a container stopping reach the ServerApp process as a signal, which "
        "Flower turns into its own graceful exit that runs only the handlers registered here; Flower "
        "has no public hook for it, and it is how history.json comes to say 'interrupted'",
        ("server_app/app.py",),
        ("exit_handler", "run_before_force_exit"),
    ),
    "get_project_config": Piece(
        "flwr.common.config",
        "get_project_config",
        "reads and validates pyproject.toml exactly as `flwr run` does, so the launcher checks a run "
        "config against the same [tool.flwr.app.config] table before starting Flower",
        ("launcher/simulate.py",),
        ("project_dir",),
    ),
    "parse_config_args": Piece(
        "flwr.common.config",
        "parse_config_args",
        "parses --run-config items (TOML files, k=v strings) with Flower's own parser, so the "
        "launcher sees the values and types `flwr run --run-config` will give the app",
        ("launcher/simulate.py",),
        ("config",),
    ),
    "ErrorCode": Piece(
        "flwr.common.constant",
        "ErrorCode",
        "the codes of a reply's Error: a reply the SuperLink makes for a node that stopped sending "
        "heartbeats (NODE_UNAVAILABLE) is recorded as 'the node left', not as a timeout",
        ("server_app/nodes.py",),
    ),
    "KEY_CLIPPING_NORM": Piece(
        "flwr.supercore.differential_privacy",
        "KEY_CLIPPING_NORM",
        "the config key under which DifferentialPrivacyClientSideFixedClipping sends the clipping norm "
        "and fixedclipping_mod reads it; a node that clips (dp-clipping='client') checks that the norm it "
        "is asked to clip to is its run's dp-clipping-norm",
        ("client_app/app.py",),
    ),
    "DEFAULT_FLOWER_CONFIG_TOML": Piece(
        "flwr.cli.constant",
        "DEFAULT_FLOWER_CONFIG_TOML",
        "the config.toml Flower writes into a fresh FLWR_HOME; the connection script starts from it "
        "when the file does not exist yet, so the file stays the one Flower would have written",
        ("deploy/connection.py",),
    ),
    "add_messages_to_queue": Piece(
        _VCE_API,
        "add_messages_to_queue",
        "the simulation runtime's message-delivery loop (one scan of every stored message per node "
        "per pass); task/simulation_queue.py replaces it with a one-pass loop that delivers "
        "the same messages, only where the runtime is already loaded (see loaded())",
        ("task/simulation_queue.py",),
        ("state", "queue", "nodes_mapping", "f_stop"),
        replaced=True,
    ),
    "InMemoryGrid": Piece(
        "flwr.superlink.grid",
        "InMemoryGrid",
        "the grid Flower's simulation hands the ServerApp: the simulation's patches are installed only "
        "where the ServerApp is given one (tests push messages through it, as the simulation's ServerApp does)",
        ("task/simulation_patches.py", *_TEST_LINKSTATE),
    ),
    "make_simple_http_retry_invoker": Piece(
        "flwr.supernode.fleet_http_connection",
        "make_simple_http_retry_invoker",
        "the retry policy of a SuperNode's connection to the SuperLink: Flower gives the connection up for "
        "good on any transport error whose message mentions SSL or TLS (a proxy that restarts or sheds load "
        "closes a TLS connection), and the node then stays up but out of the federation; deploy/supervise.py "
        "puts a policy here that retries those errors as it retries a refused connection",
        ("deploy/supervise.py",),
        (),
        replaced=True,
    ),
    "supernode_loop_time": Piece(
        "flwr.supernode.start_client_internal",
        "time",
        "the `time` module as the SuperNode's connection loop sees it: the loop sleeps a fixed 3 s "
        "(time.sleep(3), no setting) after every pull that finds no message, which it does right after "
        "each reply, so a round's messages wait up to 3 s for a node; launcher/prompt_supernode.py gives "
        "the loop a `time` whose 3 s sleep is shorter",
        ("launcher/prompt_supernode.py", "tests/test_prompt_supernode.py"),
    ),
    "actor_pool_submit": Piece(
        "flwr.simulation.ray_transport.ray_actor",
        "BasicActorPool.submit",
        "hands a message to an idle actor of the simulation's pool and raises when none is idle; "
        "task/ray_pool.py makes it wait for one, since actors that died with their Ray machine leave the pool",
        ("task/ray_pool.py", "tests/test_ray_pool.py"),
        ("self", "actor_fn", "job"),
        replaced=True,
    ),
    "actor_pool_add_back": Piece(
        "flwr.simulation.ray_transport.ray_actor",
        "BasicActorPool.add_actor_back_to_pool",
        "puts an actor back into the pool after its message, even when the actor died with its Ray "
        "machine (every later message sent to it would fail); task/ray_pool.py leaves a dead one out",
        ("task/ray_pool.py", "tests/test_ray_pool.py"),
        ("self", "future"),
        replaced=True,
    ),
    # ---- the launcher follows a run's log over the Control API, as `flwr log --stream` does ----
    "ControlHttpClient": Piece("flwr.supercore.control", "ControlHttpClient", _LOG_WHY, _LOG_USERS),
    "StreamLogsRequest": Piece("flwr.proto.control_pb2", "StreamLogsRequest", _LOG_WHY, _LOG_USERS),
    "StreamLogsResponse": Piece(
        "flwr.proto.control_pb2",
        "StreamLogsResponse",
        "what the SuperLink streams back; the test's stand-in SuperLink sends it",
        ("tests/test_log_stream.py",),
    ),
    "FLWR_PACKAGE_NAME_METADATA_KEY": Piece(
        "flwr.supercore.constant", "FLWR_PACKAGE_NAME_METADATA_KEY", _VERSION_HEADERS_WHY, _LOG_USERS
    ),
    "FLWR_PACKAGE_VERSION_METADATA_KEY": Piece(
        "flwr.supercore.constant", "FLWR_PACKAGE_VERSION_METADATA_KEY", _VERSION_HEADERS_WHY, _LOG_USERS
    ),
    "FLWR_COMPONENT_NAME_METADATA_KEY": Piece(
        "flwr.supercore.constant", "FLWR_COMPONENT_NAME_METADATA_KEY", _VERSION_HEADERS_WHY, _LOG_USERS
    ),
    "flwr_package_name": Piece("flwr.supercore.version", "package_name", _VERSION_HEADERS_WHY, _LOG_USERS),
    "flwr_package_version": Piece("flwr.supercore.version", "package_version", _VERSION_HEADERS_WHY, _LOG_USERS),
    # ---- Ray's, patched in the simulation's own Ray (task/ray_lean.py) ----
    "ray_params_init": Piece(
        "ray._private.parameter",
        "RayParams.__init__",
        "the parameters of the Ray that ray.init() starts; ray.init() has no switch for its autoscaler "
        "monitor and log monitor, so task/ray_lean.py sets no_monitor and include_log_monitor=False here, "
        "and the system config of a Ray it starts (no gcs_address) inlines objects up to 8 MB",
        ("task/ray_lean.py",),
        ("gcs_address", "include_log_monitor", "_system_config", "no_monitor"),
    ),
    "start_api_server": Piece(
        "ray._private.node",
        "Node.start_api_server",
        "starts the dashboard's API server, even with include_dashboard=False (which Flower sets); "
        "task/ray_lean.py skips it unless the dashboard is asked for",
        ("task/ray_lean.py",),
        ("include_dashboard",),
    ),
    "arrow_serializers": Piece(
        "ray._private.arrow_serialization",
        "_register_custom_datasets_serializers",
        "Ray calls it in every process that deserializes an object and imports pyarrow there when it is "
        "installed (about 28 MB resident); task/ray_lean.py lets it run only where pyarrow is already loaded",
        ("task/ray_lean.py", "task/ray_worker.py"),
        ("serialization_context",),
        replaced=True,
    ),
    "ray_default_worker": Piece(
        "ray._private.workers.default_worker",
        None,
        "the program Ray's workers run; task/ray_worker.py runs it after leaving out the Arrow serializers",
        ("task/ray_lean.py", "task/ray_worker.py"),
    ),
    # ---- used by tests only ----
    "TaskIdentity": Piece(
        "flwr.supercore.task_identity",
        "TaskIdentity",
        "Message() takes its run, node and task ids from it; tests that build Messages outside "
        "Flower's runtime set them",
        _TEST_MESSAGES,
    ),
    "build_fab_from_disk": Piece(
        "flwr.cli.build",
        "build_fab_from_disk",
        "builds the app bundle (FAB) as `flwr run` does, to check the launcher's staged copy of the "
        "app bundles to the same bytes",
        ("tests/test_launcher.py",),
        ("app",),
    ),
    "parse_args_run_superlink": Piece(
        "flwr.superlink.cli.flower_superlink",
        "_parse_args_run_superlink",
        "the argument parser of flower-superlink, to check the flags docker-compose.yml passes it",
        ("tests/test_compose.py",),
    ),
    "parse_args_run_supernode": Piece(
        "flwr.supernode.cli.flower_supernode",
        "_parse_args_run_supernode",
        "the argument parser of flower-supernode, to check the flags docker-compose.yml passes it",
        ("tests/test_compose.py",),
    ),
    "parse_args_run_superexec": Piece(
        "flwr.supercore.cli.flower_superexec",
        "_parse_args",
        "the argument parser of flower-superexec, to check the flags deploy/superlink-host and "
        "deploy/node-host pass it",
        ("tests/test_compose.py",),
    ),
    "vce_api": Piece(
        _VCE_API,
        None,
        "the module whose add_messages_to_queue the tests swap, and whose node registration the test's state uses",
        ("tests/test_simulation_queue.py", "tests/test_simulation_patches.py"),
    ),
    "register_nodes": Piece(
        _VCE_API,
        "_register_nodes",
        "registers N simulated nodes in a state, as the simulation does at start",
        _TEST_LINKSTATE,
        ("num_nodes", "state_factory"),
    ),
    "LinkStateFactory": Piece("flwr.server.superlink.linkstate", "LinkStateFactory", _LINKSTATE_WHY, _TEST_LINKSTATE),
    "RunRecord": Piece(
        "flwr.server.superlink.linkstate.in_memory_linkstate", "RunRecord", _LINKSTATE_WHY, _TEST_LINKSTATE
    ),
    "generate_rand_int_from_bytes": Piece(
        "flwr.server.superlink.linkstate.utils", "generate_rand_int_from_bytes", _LINKSTATE_WHY, _TEST_LINKSTATE
    ),
    "RUN_ID_NUM_BYTES": Piece("flwr.common.constant", "RUN_ID_NUM_BYTES", _LINKSTATE_WHY, _TEST_LINKSTATE),
    "TASK_ID_NUM_BYTES": Piece("flwr.common.constant", "TASK_ID_NUM_BYTES", _LINKSTATE_WHY, _TEST_LINKSTATE),
    "SUPERLINK_NODE_ID": Piece("flwr.common.constant", "SUPERLINK_NODE_ID", _LINKSTATE_WHY, _TEST_LINKSTATE),
    "FLWR_IN_MEMORY_DB_NAME": Piece(
        "flwr.supercore.constant", "FLWR_IN_MEMORY_DB_NAME", _LINKSTATE_WHY, _TEST_LINKSTATE
    ),
    "NOOP_FEDERATION_ID": Piece("flwr.supercore.constant", "NOOP_FEDERATION_ID", _LINKSTATE_WHY, _TEST_LINKSTATE),
    "ObjectStoreFactory": Piece("flwr.supercore.object_store", "ObjectStoreFactory", _LINKSTATE_WHY, _TEST_LINKSTATE),
    "NoOpFederationManager": Piece(
        "flwr.superlink.federation", "NoOpFederationManager", _LINKSTATE_WHY, _TEST_LINKSTATE
    ),
    "Run": Piece("flwr.supercore.run", "Run", _LINKSTATE_WHY, _TEST_LINKSTATE),
    "Task": Piece("flwr.proto.task_pb2", "Task", _LINKSTATE_WHY, _TEST_LINKSTATE),
}

_CARRY_WHY = (
    "what the strategy carries from round to round; checkpoints save it and a resumed run "
    "restores it, so the run continues as if it had not stopped (the strategies have no "
    "public state API)"
)
_CARRIED: tuple[Attributes, ...] = (
    Attributes("flwr.serverapp.strategy", "FedAvgM", ("momentum_vector",), _CARRY_WHY, ("server_app/strategy.py",)),
    Attributes("flwr.serverapp.strategy", "FedAdam", ("m_t", "v_t"), _CARRY_WHY, ("server_app/strategy.py",)),
    Attributes("flwr.serverapp.strategy", "FedYogi", ("m_t", "v_t"), _CARRY_WHY, ("server_app/strategy.py",)),
    Attributes("flwr.serverapp.strategy", "FedAdagrad", ("v_t",), _CARRY_WHY, ("server_app/strategy.py",)),
)
ATTRIBUTES: tuple[Attributes, ...] = (
    *_CARRIED,
    Attributes(
        "flwr.serverapp.strategy",
        "DifferentialPrivacyServerSideFixedClipping",
        ("strategy",),
        "the strategy inside the DP wrapper, whose carried state is saved and restored",
        ("server_app/strategy.py",),
    ),
    Attributes(
        "flwr.serverapp.strategy",
        "DifferentialPrivacyClientSideFixedClipping",
        ("strategy",),
        "the strategy inside the DP wrapper, whose carried state is saved and restored",
        ("server_app/strategy.py",),
    ),
    Attributes(
        "flwr.supercore.retry.retry_invoker",
        "RetryInvoker",
        ("should_giveup",),
        "the give-up test of a SuperNode's retry policy, wrapped so that broken connections are retried",
        ("deploy/supervise.py",),
    ),
    Attributes(
        "flwr.simulation.ray_transport.ray_actor",
        "BasicActorPool",
        ("pool", "num_actors", "_future_to_actor"),
        "the idle actors, how many there are in all, and which actor runs which call: an actor that "
        "died with its Ray machine is taken out of them",
        ("task/ray_pool.py",),
    ),
    Attributes(
        "flwr.server.superlink.linkstate.in_memory_linkstate",
        "InMemoryLinkState",
        ("message_ins_store", "lock", "_check_stored_messages"),
        "the one-pass delivery loop scans the stored messages itself, under the state's lock, "
        "with Flower's own validity checks (without them it falls back to get_message_ins per node)",
        ("task/simulation_queue.py",),
    ),
)

# The strategies' carried state, by attribute name.
STRATEGY_STATE: tuple[str, ...] = tuple(dict.fromkeys(name for a in _CARRIED for name in a.names))
# Where Flower's DP wrappers keep the strategy they wrap.
WRAPPED_STRATEGY = "strategy"


class MissingFlowerPiece(ImportError):
    """The installed Flower or Ray lacks a piece this project relies on, or its parameters changed."""


def installed_version(distribution: str) -> str:
    """The installed version of ``flwr`` or ``ray``, without importing it."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def version_mismatch(distribution: str, *pieces: str) -> str | None:
    """Why ``pieces`` of ``flwr`` or ``ray`` are left alone on this install: its major.minor is not the
    one they were checked with (None when it is)."""
    checked = CHECKED_WITH[distribution]
    installed = installed_version(distribution)
    if installed.startswith(checked.rsplit(".", 1)[0] + "."):
        return None
    return (
        f"{_NAMES[distribution]} {installed} is not the {checked} that piece(s) {', '.join(pieces)} of "
        "task/flower_compat.py were checked with"
    )


def _missing(name: str, what: str) -> MissingFlowerPiece:
    piece = PIECES[name]
    dist = piece.distribution
    return MissingFlowerPiece(
        f"{_NAMES[dist]} {installed_version(dist)} {what}. This project needs it (piece '{name}' of "
        f"task/flower_compat.py, checked with {dist} {CHECKED_WITH[dist]}; used by {', '.join(piece.users)}): "
        f"{piece.why}"
    )


def _check_params(name: str, found: Any) -> None:
    piece = PIECES[name]
    if piece.params is None:
        return
    takes = list(inspect.signature(found).parameters)
    gone = [p for p in piece.params if p not in takes]
    if piece.replaced and takes != list(piece.params):
        raise _missing(name, f"has {piece.path}({', '.join(takes)}), not ({', '.join(piece.params)}) as replaced here")
    if gone:
        raise _missing(name, f"has {piece.path} without the parameter(s) {', '.join(gone)}")
    if [p for p in takes if p in piece.params] != list(piece.params):
        raise _missing(name, f"has {piece.path} taking {', '.join(piece.params)} in another order")


def resolve(name: str) -> Any:
    """The piece ``name`` of :data:`PIECES`, imported now and its parameters checked."""
    piece = PIECES[name]
    try:
        found = importlib.import_module(piece.module)
        for attr in piece.attr.split(".") if piece.attr else ():
            found = getattr(found, attr)
    except (ImportError, AttributeError) as exc:
        raise _missing(name, f"has no {piece.path} ({type(exc).__name__}: {exc})") from exc
    _check_params(name, found)
    return found


def owner(name: str) -> tuple[Any, str]:
    """Where piece ``name`` is looked up, to put another function in its place: the module or
    class that holds it and the attribute's name there (the piece itself is checked first)."""
    resolve(name)
    piece = PIECES[name]
    *inside, attr = (piece.attr or "").split(".")
    holder = importlib.import_module(piece.module)
    for part in inside:
        holder = getattr(holder, part)
    return holder, attr


def loaded(name: str) -> ModuleType | None:
    """The module of piece ``name`` if this process has already imported it, else None
    (without importing it: asking must not start Flower's simulation runtime)."""
    return sys.modules.get(PIECES[name].module)


def __getattr__(name: str) -> Any:
    """``from task.flower_compat import NAME`` resolves piece NAME."""
    if name in PIECES:
        return resolve(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
