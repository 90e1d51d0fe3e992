"""A real 3-node Redis Cluster made of the embedded valkey binary, for tests."""

import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from registry import EmbeddedRedis

SLOTS = 16384


def node_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too and below 65536."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@contextmanager
def local_cluster(base: Path, nodes: int = 3) -> Iterator[list[int]]:
    """Start `nodes` cluster nodes on free ports, split the slots, yield their ports."""
    ports = [node_port() for _ in range(nodes)]
    servers = [
        EmbeddedRedis(
            base / f"node-{port}",
            persist=False,
            port=port,
            extra_config=["cluster-enabled yes", f"cluster-config-file nodes-{port}.conf"],
        )
        for port in ports
    ]
    try:
        for server in servers:
            server.start()
        clients = [redis.Redis(port=port) for port in ports]
        share = SLOTS // nodes
        for index, client in enumerate(clients):
            last = SLOTS - 1 if index == nodes - 1 else (index + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        deadline = time.monotonic() + 20
        while not all(
            c.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0
            for c in clients
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not converge")
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield ports
    finally:
        for server in servers:
            server.stop()
