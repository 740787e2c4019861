import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client_app.app import MnistClient, app
from task.config import Settings
from task.errors import ConfigError
from task.flower_compat import TaskIdentity
from task.models import build_model
from task.shards import load_node_data
from task.training import get_weights


@pytest.fixture
def small_client() -> MnistClient:
    settings = Settings(local_epochs=2, batch_size=10, learning_rate=0.1, device="cpu")
    return MnistClient(
        settings, load_node_data(settings, partition_id=3, num_partitions=100), partition_id=3, num_partitions=100
    )


def test_fit_trains_on_the_nodes_shard_only(small_client):
    start = get_weights(build_model(small_client.settings))
    weights, num_examples, metrics = small_client.fit(start, {"server-round": 1})
    assert num_examples == 600
    assert metrics["train-loss"] < 1.5
    assert set(metrics) == {"train-loss"}  # weights, a count and a loss leave the node, nothing else
    assert [w.shape for w in weights] == [w.shape for w in start]
    assert any(not np.allclose(a, b) for a, b in zip(weights, start))


def test_evaluate_uses_the_local_test_images_and_improves_after_fit(small_client):
    start = get_weights(build_model(small_client.settings))
    loss_before, n, before = small_client.evaluate(start, {})
    trained, _, _ = small_client.fit(start, {"server-round": 1})
    loss_after, _, after = small_client.evaluate(trained, {})
    assert n == 100  # 10,000 test images over 100 nodes
    assert after["accuracy"] > before["accuracy"] + 0.4
    assert loss_after < loss_before


def test_partition_id_outside_the_range_is_refused():
    with pytest.raises(ConfigError, match=r"partition-id=5 is out of range for num-partitions=5 \(0 to 4\)"):
        load_node_data(Settings(), partition_id=5, num_partitions=5)


def _message(kind: str, weights: list[np.ndarray]) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 2, 3
    content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, dst_node_id=2, message_type=kind)


def _context(run_config: dict) -> Context:
    return Context(
        run_id=1,
        node_id=2,
        node_config={"partition-id": 0, "num-partitions": 50},
        state=RecordDict(),
        run_config=run_config,
    )


def test_clientapp_answers_train_and_evaluate_messages():
    run_config = {"local-epochs": 1, "device": "cpu"}
    weights = get_weights(build_model(Settings()))
    reply = app(_message(MessageType.TRAIN, weights), _context(run_config))
    assert not reply.has_error()
    assert reply.content["metrics"]["num-examples"] == 1200
    assert len(reply.content["arrays"].to_numpy_ndarrays()) == len(weights)

    reply = app(_message(MessageType.EVALUATE, weights), _context(run_config))
    assert reply.content["metrics"]["num-examples"] == 200
    assert 0 <= reply.content["metrics"]["accuracy"] <= 1


def test_the_query_handler_says_which_shard_the_node_holds_without_loading_data(monkeypatch):
    import client_app.app as client_module

    monkeypatch.setattr(client_module, "load_node_data_cached", lambda *a: pytest.fail("data loaded for a query"))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 2, 3
    reply = app(Message(content=RecordDict(), dst_node_id=2, message_type=MessageType.QUERY), _context({}))
    assert dict(reply.content["node"]) == {"partition-id": 0, "num-partitions": 50}


def test_a_query_to_a_node_with_an_out_of_range_partition_names_it():
    context = _context({})
    context.node_config = {"partition-id": 4, "num-partitions": 3}
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 2, 3
    with pytest.raises(ConfigError, match=r"partition-id=4 is out of range for num-partitions=3"):
        app(Message(content=RecordDict(), dst_node_id=2, message_type=MessageType.QUERY), context)


def test_a_supernode_without_its_partition_is_told_how_to_start():
    context = _context({})
    context.node_config = {}
    with pytest.raises(ConfigError, match='--node-config "partition-id=N num-partitions=M"'):
        app(_message(MessageType.TRAIN, get_weights(build_model(Settings()))), context)


def test_a_pretraining_round_trains_only_that_rounds_pair():
    settings = Settings.from_run_config(
        {
            "model": "autoencoder",
            "ae-pretrain-rounds": 1,
            "num-server-rounds": 4,
            "optimizer": "adam",
            "learning-rate": 0.001,
            "local-epochs": 1,
            "device": "cpu",
        }
    )
    client = MnistClient(
        settings, load_node_data(settings, partition_id=0, num_partitions=100), partition_id=0, num_partitions=100
    )
    start = get_weights(build_model(settings))
    names = list(build_model(settings).state_dict())
    changed = {}
    for server_round in (1, 2, 3, 4):
        weights, _, _ = client.fit(start, {"server-round": server_round})
        changed[server_round] = [n for n, a, b in zip(names, weights, start) if not np.array_equal(a, b)]
    # encoder.0 / decoder.4 are the outer pair, encoder.4 / decoder.0 the code layer's pair
    assert changed[1] == ["encoder.0.weight", "encoder.0.bias", "decoder.4.weight", "decoder.4.bias"]
    assert changed[2] == ["encoder.2.weight", "encoder.2.bias", "decoder.2.weight", "decoder.2.bias"]
    assert changed[3] == ["encoder.4.weight", "encoder.4.bias", "decoder.0.weight", "decoder.0.bias"]
    assert changed[4] == names


def test_error_messages_leaving_a_node_carry_no_local_paths():
    from client_app.app import scrub_paths

    text = "MNIST cache /home/ann/.cache/fedmnist/mnist-uint8.npz is unreadable: delete /home/ann/x; partition-id=7"
    assert scrub_paths(text) == "MNIST cache <local>/mnist-uint8.npz is unreadable: delete <local>/x; partition-id=7"


def test_a_failing_handler_sends_its_error_without_paths(monkeypatch, tmp_path):
    import client_app.app as client_module

    def unreadable(*args, **kwargs):
        raise OSError(f"cannot read {tmp_path}/secret/shard.npz")

    monkeypatch.setattr(client_module, "load_node_data_cached", unreadable)
    with pytest.raises(Exception) as err:
        app(_message(MessageType.TRAIN, get_weights(build_model(Settings()))), _context({"device": "cpu"}))
    assert str(tmp_path) not in str(err.value) and "<local>/shard.npz" in str(err.value)


# ---- dp-clipping = "client": the node clips its own update with Flower's fixedclipping_mod ----

CLIP = 0.5  # L2 norm; one local epoch on a node's 1,200 images moves the weights much further


class _OneNode:
    """The part of a Grid a strategy's configure_* uses: this test's node only."""

    def get_node_ids(self) -> list[int]:
        return [2]


def _from_server(knobs: dict, kind: str = MessageType.TRAIN) -> tuple[Message, ArrayRecord]:
    """The message the ServerApp's strategy (with its DP wrapper) sends node 2, and the arrays in it."""
    from server_app.strategy import build_strategy

    settings = Settings.from_run_config(knobs)
    arrays = ArrayRecord(build_model(settings).state_dict())
    strategy = build_strategy(settings, num_sampled=1)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 3
    configure = strategy.configure_train if kind == MessageType.TRAIN else strategy.configure_evaluate
    (msg,) = configure(1, arrays, ConfigRecord({}), _OneNode())
    TaskIdentity.node_id = 2
    return msg, arrays


def _update(reply: Message, sent: ArrayRecord) -> list[np.ndarray]:
    (record,) = reply.content.array_records.values()
    return [record[k].numpy().astype(np.float64) - sent[k].numpy().astype(np.float64) for k in sent]


def _norm(update: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(u**2) for u in update)))


def test_under_client_side_clipping_a_nodes_reply_is_clipped_to_the_clipping_norm():
    from server_app.checks import check_clipped

    knobs = {"local-epochs": 1, "device": "cpu", "dp-clipping-norm": CLIP, "dp-noise-multiplier": 1.0}
    # Server-side clipping: the node sends its whole update; the server clips it.
    msg, sent = _from_server({**knobs, "dp-clipping": "server"})
    assert "clipping_norm" not in msg.content["config"]
    unclipped = app(msg, _context({**knobs, "dp-clipping": "server"}))
    assert not unclipped.has_error()
    raw = _update(unclipped, sent)
    assert _norm(raw) > 2 * CLIP  # so the clipping below is not a no-op
    assert "more than dp-clipping-norm=0.5" in check_clipped(unclipped, sent, CLIP)

    # Client-side clipping: the server only names the norm; the node's reply is already clipped.
    msg, sent = _from_server({**knobs, "dp-clipping": "client"})
    assert msg.content["config"]["clipping_norm"] == CLIP
    reply = app(msg, _context({**knobs, "dp-clipping": "client"}))
    assert not reply.has_error()
    assert list(reply.content["arrays"].keys()) == list(sent.keys())  # the names the server checks
    assert reply.content["metrics"]["num-examples"] == 1200
    clipped = _update(reply, sent)
    assert CLIP * (1 - 1e-5) < _norm(clipped) <= CLIP * (1 + 1e-5)
    assert check_clipped(reply, sent, CLIP) is None
    # the same update, scaled down: what the server would have made of the unclipped one
    for c, r in zip(clipped, raw):
        assert np.allclose(c, r * CLIP / _norm(raw), atol=1e-6)


def test_a_node_told_to_clip_evaluates_and_answers_queries_as_before():
    knobs = {"device": "cpu", "dp-clipping-norm": CLIP, "dp-clipping": "client"}
    msg, _ = _from_server(knobs, MessageType.EVALUATE)
    reply = app(msg, _context(knobs))
    assert not reply.has_error() and reply.content["metrics"]["num-examples"] == 200
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 2, 3
    reply = app(Message(content=RecordDict(), dst_node_id=2, message_type=MessageType.QUERY), _context(knobs))
    assert dict(reply.content["node"]) == {"partition-id": 0, "num-partitions": 50}


def test_a_node_told_to_clip_refuses_a_training_message_without_its_clipping_norm():
    knobs = {"local-epochs": 1, "device": "cpu", "dp-clipping-norm": CLIP, "dp-clipping": "client"}
    weights = get_weights(build_model(Settings()))
    reply = app(_message(MessageType.TRAIN, weights), _context(knobs))  # no clipping norm in its config
    assert reply.has_error() and "requires the key 'clipping_norm'" in reply.error.reason

    msg, _ = _from_server({**knobs, "dp-clipping-norm": 5.0})  # a server clipping to another norm
    with pytest.raises(ConfigError, match="clip its update to L2 norm 5.0, but the run's dp-clipping-norm is 0.5"):
        app(msg, _context(knobs))


# ---- attacks (task/faults.py): what an attacking node's handler really sends ----


def test_a_scaling_node_sends_its_update_times_k_and_the_count_it_claims(monkeypatch):
    monkeypatch.setenv("FEDMNIST_ALLOW_FAULTS", "1")
    run_config = {"local-epochs": 1, "device": "cpu"}
    weights = get_weights(build_model(Settings()))
    honest = app(_message(MessageType.TRAIN, weights), _context(run_config))
    attacked = app(
        _message(MessageType.TRAIN, weights), _context({**run_config, "fault-injection": "scale=20@0 count=1e9@0"})
    )
    assert not attacked.has_error()
    assert honest.content["metrics"]["num-examples"] == 1200
    assert attacked.content["metrics"]["num-examples"] == 1_000_000_000
    assert list(attacked.content["arrays"].keys()) == list(honest.content["arrays"].keys())
    for g, t, sent in zip(
        weights, honest.content["arrays"].to_numpy_ndarrays(), attacked.content["arrays"].to_numpy_ndarrays()
    ):
        assert sent.dtype == t.dtype == np.float32
        assert np.array_equal(sent, g + np.float32(20) * (t - g))  # G + 20 (T - G), to the bit
    update = np.concatenate([(t - g).ravel() for g, t in zip(weights, honest.content["arrays"].to_numpy_ndarrays())])
    assert np.linalg.norm(update) > 0.1  # the honest update is no zero that any scaling would keep
