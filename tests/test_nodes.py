"""The server's check of which shard each node holds."""

import pytest
from flwr.app import ConfigRecord

from server_app.nodes import NodeBook, NodesUnavailable, check_partitions, wait_for_nodes
from task.errors import ConfigError


def test_nodes_that_agree_give_the_federations_num_partitions():
    assert check_partitions({11: (0, 3), 12: (1, 3), 13: (2, 3)}) == 3


def test_fewer_nodes_than_partitions_is_allowed():
    assert check_partitions({11: (0, 3), 13: (2, 3)}) == 3


def test_two_nodes_with_the_same_partition_stop_the_run_naming_them():
    with pytest.raises(ConfigError, match="partition-id=1 on nodes 12, 14") as err:
        check_partitions({11: (0, 3), 12: (1, 3), 14: (1, 3)})
    assert "give each SuperNode its own partition-id" in str(err.value)


def test_nodes_that_disagree_on_num_partitions_stop_the_run_naming_them():
    with pytest.raises(ConfigError, match="num-partitions=2 on node.s. 11; num-partitions=3 on node.s. 12, 13"):
        check_partitions({11: (0, 2), 12: (1, 3), 13: (2, 3)})


def test_no_answer_at_all():
    with pytest.raises(NodesUnavailable):
        check_partitions({})


class FewNodes:
    def get_node_ids(self):
        return [5]


def test_waiting_for_nodes_that_never_come_ends_with_what_to_do():
    with pytest.raises(
        NodesUnavailable, match="only 1 of the 2 nodes .* connected within 0.5 s: start more SuperNodes"
    ):
        wait_for_nodes(FewNodes(), 2, timeout=0.5)
    assert wait_for_nodes(FewNodes(), 1, timeout=0.5) == [5]


class ChangingGrid:
    """A grid whose connected nodes the test sets; each node answers the shard query from ``shards``."""

    def __init__(self, shards: dict[int, tuple[int, int]]) -> None:
        self.shards = shards
        self.online = sorted(shards)
        self.asked: list[int] = []

    def get_node_ids(self):
        return list(self.online)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Message, RecordDict

        from task.flower_compat import TaskIdentity
        from task.node_config import NUM_PARTITIONS, PARTITION_ID
        from task.shards import NODE_RECORD

        for message in messages:
            node = message.metadata.dst_node_id
            self.asked.append(node)
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, node
            ask = Message(content=RecordDict(), dst_node_id=node, message_type=message.metadata.message_type)
            TaskIdentity.node_id = node
            pid, n = self.shards[node]
            content = RecordDict({NODE_RECORD: ConfigRecord({PARTITION_ID: pid, NUM_PARTITIONS: n})})
            yield Message(content=content, reply_to=ask)
            TaskIdentity.node_id = 0


def test_a_node_that_left_and_came_back_with_the_same_id_is_asked_again_and_used():
    grid = ChangingGrid({11: (0, 3), 12: (1, 3), 13: (2, 3)})
    book = NodeBook()
    assert book.start(grid, grid.get_node_ids(), timeout=5) == 3
    grid.online = [11, 13]  # node 12 is lost (killed, or its connection dropped)
    book.refresh(grid, timeout=5)
    assert book.available() == [0, 2] and book.node_of(1) == -1
    grid.asked.clear()
    grid.online = [11, 12, 13]  # back with the same id: the id follows its registered key
    book.refresh(grid, timeout=5)
    assert grid.asked == [12]  # asked again which shard it holds
    assert book.available() == [0, 1, 2] and book.node_of(1) == 12


def test_a_node_that_came_back_with_another_shard_is_taken_at_its_word():
    grid = ChangingGrid({11: (0, 3), 12: (1, 3)})
    book = NodeBook()
    book.start(grid, grid.get_node_ids(), timeout=5)
    grid.online = [11]
    book.refresh(grid, timeout=5)
    grid.shards[12] = (2, 3)  # restarted with another --node-config
    grid.online = [11, 12]
    book.refresh(grid, timeout=5)
    assert book.available() == [0, 2] and book.node_of(2) == 12


def test_a_refused_node_that_comes_back_is_asked_again_and_a_present_one_is_not():
    grid = ChangingGrid({11: (0, 3), 12: (1, 3)})
    book = NodeBook()
    book.start(grid, grid.get_node_ids(), timeout=5)
    grid.shards[14] = (0, 2)  # disagrees on num-partitions: refused
    grid.online = [11, 12, 14]
    book.refresh(grid, timeout=5)
    assert 14 in book.refused and book.available() == [0, 1]
    grid.asked.clear()
    book.refresh(grid, timeout=5)
    assert grid.asked == []  # not asked every round while it stays
    grid.online = [11, 12]
    book.refresh(grid, timeout=5)
    grid.shards[14] = (2, 3)  # fixed and back
    grid.online = [11, 12, 14]
    book.refresh(grid, timeout=5)
    assert book.available() == [0, 1, 2]
