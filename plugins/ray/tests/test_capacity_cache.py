"""One capacity cache policy for every Ray executor (needs Ray)."""

from __future__ import annotations

import pytest

from curator_exec_ray import cluster

pytestmark = pytest.mark.timeout(300)


def test_capacity_is_reused_while_the_cluster_is_unchanged(ray_attached, monkeypatch) -> None:
    first = cluster.cluster_capacity()
    assert cluster.cluster_capacity() is first  # same connection, nodes and resources: reused
    assert cluster.cluster_capacity(ignore_head_node=True).nodes == ()  # one node, the head: filtered
    monkeypatch.setattr(cluster, "CAPACITY_TTL", 0.0)
    again = cluster.cluster_capacity()
    assert again is not first and again == first  # expired: probed again, same answer
    monkeypatch.setattr(cluster, "CAPACITY_TTL", 60.0)
    real = cluster.nodes_signature
    monkeypatch.setattr(cluster, "nodes_signature", lambda nodes=None: (*real(nodes), ("new-node", ())))
    assert cluster.cluster_capacity() is not again  # the nodes changed: probed again
