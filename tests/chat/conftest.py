"""The NATS cluster the chat bus tests share: started once, every node up again before each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chat.nats_cluster import NatsCluster


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-server nodes on localhost ports, stopped at the end of the session."""
    cluster = NatsCluster(Path(tmp_path_factory.mktemp("nats")))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats(nats_cluster: NatsCluster) -> NatsCluster:
    """The cluster with every node running (a test before may have killed one)."""
    nats_cluster.start()
    return nats_cluster
