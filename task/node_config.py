"""The node-config keys that tell a node its shard, and the one check of their values.

A SuperNode gets them from ``flower-supernode --node-config "partition-id=N num-partitions=M"``
(the simulation sets them for each virtual node). The ClientApp (through ``task.shards``)
and the image's entrypoint (``deploy/entrypoint.py``, before Flower starts) both check them
here. Standard library only, so that the entrypoint can import it without loading numpy.
"""

from __future__ import annotations

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


def partition_problem(partition_id: int, num_partitions: int) -> str | None:
    """What is wrong with this pair (a partition id must be in 0..num-partitions-1), or None."""
    if num_partitions < 1:
        return f"{NUM_PARTITIONS}={num_partitions} must be at least 1"
    if not 0 <= partition_id < num_partitions:
        return (
            f"{PARTITION_ID}={partition_id} is out of range for {NUM_PARTITIONS}={num_partitions} "
            f"(0 to {num_partitions - 1})"
        )
    return None
