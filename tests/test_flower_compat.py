"""The parts of Flower and Ray that are not their public API, all listed in task/flower_compat.py,
are still there in the installed Flower and Ray, with the parameters this project relies on; and
the rest of the project uses only their public API.

After changing the ``flwr`` or ``ray`` pin, run this first: each failure names the piece, who
needs it and why, so the fix starts from one line of task/flower_compat.py."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from task import flower_compat
from task.flower_compat import ATTRIBUTES, PIECES, STRATEGY_STATE, WRAPPED_STRATEGY, MissingFlowerPiece, TaskIdentity

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "task" / "flower_compat.py"

# Flower's public API: these modules, and of each only the names in its __all__
# (plain ``import flwr`` for ``flwr.__version__``). Keep in step with flower_compat's docstring.
PUBLIC = (
    "flwr.app",
    "flwr.serverapp",
    "flwr.serverapp.strategy",
    "flwr.clientapp",
    "flwr.clientapp.mod",
    "flwr.client",
    "flwr.common",
)


def _missing(what: str, users: tuple[str, ...], why: str) -> str:
    return (
        f"Flower {flower_compat.installed_version('flwr')}: {what} (see task/flower_compat.py, checked with flwr "
        f"{flower_compat.CHECKED_WITH['flwr']}; needed by {', '.join(users)}: {why})"
    )


@pytest.mark.parametrize("name", sorted(PIECES))
def test_every_piece_is_still_in_flower_or_ray_with_the_parameters_used(name):
    """Resolved against the installed Flower or Ray, its parameters checked (see Piece.params)."""
    try:
        flower_compat.resolve(name)
        problem = ""
    except MissingFlowerPiece as exc:
        problem = str(exc)
    if problem:  # failed outside the except block: the message once, without a chained traceback
        pytest.fail(problem, pytrace=False)


def test_a_piece_whose_parameters_changed_says_which_and_why(monkeypatch):
    monkeypatch.setitem(PIECES, "moved", flower_compat.Piece("flwr.common", "now", "the reason", ("x.py",), ("tz",)))
    with pytest.raises(MissingFlowerPiece, match=r"flwr\.common\.now without the parameter\(s\) tz.*piece 'moved'"):
        flower_compat.resolve("moved")
    swapped = flower_compat.Piece("flwr.common", "log", "the reason", ("x.py",), ("msg", "level"))
    monkeypatch.setitem(PIECES, "swapped", swapped)
    with pytest.raises(MissingFlowerPiece, match=r"taking msg, level in another order.*piece 'swapped'"):
        flower_compat.resolve("swapped")
    replaced = flower_compat.Piece("flwr.common", "log", "the reason", ("x.py",), ("level",), replaced=True)
    monkeypatch.setitem(PIECES, "replaced", replaced)
    with pytest.raises(MissingFlowerPiece, match=r"log\(level, msg, args, kwargs\), not \(level\) as replaced here"):
        flower_compat.resolve("replaced")


def test_a_replaced_piece_is_found_where_flower_or_ray_looks_it_up():
    for name in ("add_messages_to_queue", "ray_params_init", "start_api_server"):
        holder, attr = flower_compat.owner(name)
        assert getattr(holder, attr) is flower_compat.resolve(name)
    assert flower_compat.owner("add_messages_to_queue")[0] is flower_compat.resolve("vce_api")
    assert flower_compat.owner("start_api_server")[0].__name__ == "Node"


def test_a_missing_piece_says_which_and_why(monkeypatch):
    monkeypatch.setitem(PIECES, "gone", flower_compat.Piece("flwr.app", "NoSuchThing", "the reason", ("x.py",)))
    with pytest.raises(
        MissingFlowerPiece, match=r"has no flwr\.app\.NoSuchThing.*piece 'gone'.*used by x\.py\): the reason"
    ):
        flower_compat.resolve("gone")
    with pytest.raises(ImportError, match="piece 'gone'"):
        from task.flower_compat import gone  # noqa: F401
    with pytest.raises(AttributeError):
        flower_compat.not_a_piece  # noqa: B018


def test_asking_whether_a_module_is_loaded_does_not_load_it(monkeypatch):
    monkeypatch.setitem(PIECES, "unloaded", flower_compat.Piece("flwr.not_a_module_xyz", None, "", ()))
    assert flower_compat.loaded("unloaded") is None


@pytest.mark.parametrize("attrs", ATTRIBUTES, ids=lambda a: a.cls)
def test_every_class_whose_attributes_are_read_by_name_is_still_there(attrs):
    try:
        getattr(importlib.import_module(attrs.module), attrs.cls)
    except (ImportError, AttributeError) as exc:
        pytest.fail(_missing(f"no {attrs.module}.{attrs.cls} ({exc})", attrs.users, attrs.why), pytrace=False)


class _Nodes:
    """The part of a Grid a strategy's configure_train uses."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def _train_replies(strategy, arrays: ArrayRecord, nodes: list[int]) -> list[Message]:
    """Ask ``nodes`` through the strategy; each answers with the arrays plus its node id."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    replies = []
    for ask in strategy.configure_train(1, arrays, ConfigRecord({}), _Nodes(nodes)):
        node = ask.metadata.dst_node_id
        TaskIdentity.node_id = node
        trained = ArrayRecord({k: Array(v.numpy() + node) for k, v in arrays.items()})
        content = RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 10})})
        replies.append(Message(content=content, reply_to=ask))
    TaskIdentity.node_id = 0
    return replies


def _carried_rows():
    return [a for a in ATTRIBUTES if set(a.names) <= set(STRATEGY_STATE)]


@pytest.mark.parametrize("attrs", _carried_rows(), ids=lambda a: a.cls)
def test_strategies_still_keep_their_carried_state_in_the_attributes_we_save(attrs):
    """server_app/strategy.py checkpoints these attributes by name after a round and sets them
    back on resume: a real strategy must hold them (not None) after one aggregation."""
    strategy_class = getattr(importlib.import_module(attrs.module), attrs.cls)
    knobs = {"server_momentum": 0.9} if attrs.cls == "FedAvgM" else {}
    strategy = strategy_class(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1, **knobs)
    arrays = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.zeros(2, np.float32))})
    averaged, _ = strategy.aggregate_train(1, _train_replies(strategy, arrays, [3, 5]))
    assert averaged is not None
    unset = [name for name in attrs.names if vars(strategy).get(name) is None]
    if unset:
        pytest.fail(
            _missing(f"{attrs.cls} no longer keeps {unset} after aggregate_train", attrs.users, attrs.why),
            pytrace=False,
        )


@pytest.mark.parametrize(
    "wrapper_class", ["DifferentialPrivacyServerSideFixedClipping", "DifferentialPrivacyClientSideFixedClipping"]
)
def test_the_dp_wrapper_still_keeps_the_strategy_it_wraps(wrapper_class):
    from flwr.serverapp import strategy as flower_strategies
    from flwr.serverapp.strategy import FedAvgM

    (attrs,) = [a for a in ATTRIBUTES if a.cls == wrapper_class]
    inner = FedAvgM(server_momentum=0.9)
    wrapper = getattr(flower_strategies, wrapper_class)(inner, 0.5, 1.0, 2)
    if getattr(wrapper, WRAPPED_STRATEGY, None) is not inner:
        pytest.fail(
            _missing(f"the DP wrapper no longer keeps its strategy in .{WRAPPED_STRATEGY}", attrs.users, attrs.why),
            pytrace=False,
        )


def test_the_simulations_in_memory_state_still_has_what_the_one_pass_delivery_reads():
    from task.flower_compat import FLWR_IN_MEMORY_DB_NAME, LinkStateFactory, NoOpFederationManager, ObjectStoreFactory

    (attrs,) = [a for a in ATTRIBUTES if a.cls == "InMemoryLinkState"]
    state = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
    assert type(state).__name__ == attrs.cls
    absent = [name for name in attrs.names if not hasattr(state, name)]
    if absent:
        pytest.fail(
            _missing(f"the simulation's in-memory state has no {absent}", attrs.users, attrs.why), pytrace=False
        )
    state._check_stored_messages(set())  # called with a set of message ids
    with state.lock:
        assert isinstance(state.message_ins_store, dict)


def _project_files() -> list[Path]:
    skip = {".venv", ".git", "build", "node_modules", "__pycache__"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts) and p != COMPAT)


def _flower_uses(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module, name) for every Flower import; (``flwr``, attr) for ``flwr.attr`` reads."""
    uses: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            uses += [(a.name, None) for a in node.names if a.name.split(".")[0] == "flwr"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "flwr":
            uses += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "flwr":
            uses.append(("flwr", node.attr))
    return uses


def _is_public(module: str, name: str | None) -> bool:
    if module == "flwr":
        return name in (None, "__version__")
    if module not in PUBLIC:
        return False
    return name is None or name in getattr(importlib.import_module(module), "__all__", ())


def _underscored(dotted: str) -> bool:
    """A private part in a dotted name (``ray._private``), dunders such as ``__version__`` aside."""
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _ray_private_uses(tree: ast.AST) -> list[str]:
    """Every import of a private part of Ray, and every ``ray._x`` read."""
    uses: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            uses += [a.name for a in node.names if a.name.split(".")[0] == "ray" and _underscored(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ray":
            uses += [f"{node.module}.{a.name}" for a in node.names if _underscored(f"{node.module}.{a.name}")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ray":
            uses += [f"ray.{node.attr}"] if _underscored(node.attr) else []
    return uses


def test_the_rest_of_the_project_uses_only_the_public_api_of_flower_and_ray():
    private = []
    for path in _project_files():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), rel)
        private += [f"{rel}: {m}{'.' + n if n else ''}" for m, n in _flower_uses(tree) if not _is_public(m, n)]
        private += [f"{rel}: {use}" for use in _ray_private_uses(tree)]
    assert not private, (
        "Flower's or Ray's internals used outside task/flower_compat.py (list the piece there, with why it is "
        "needed, and import it from there):\n  " + "\n  ".join(private)
    )


def test_the_scan_finds_private_imports_of_flower_and_ray():
    code = (
        "import flwr.server.superlink\nfrom flwr.app import Message\nfrom ray._private import node\n"
        "import ray.util\nimport ray\nray._private.worker\nray.__version__\n"
    )
    tree = ast.parse(code)
    assert [(m, n) for m, n in _flower_uses(tree) if not _is_public(m, n)] == [("flwr.server.superlink", None)]
    assert sorted(_ray_private_uses(tree)) == ["ray._private", "ray._private.node"]
