"""The server's check of which shard each node holds."""

import pytest

from server_app.nodes import NodesUnavailable, check_partitions, wait_for_nodes
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
