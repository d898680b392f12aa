"""`make chaos` (scripts/chaos.py): its pure parts, its proxy, and a short run of it.

The short run is the real script on servers of its own, with fewer events and a shorter
PostgreSQL partition than `make chaos`; its last line must show nothing lost or
duplicated, every dead letter kept, and every recovery within the limit.
"""

from __future__ import annotations

import importlib.util
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from signals_app.messages import Limits, Rejection, decode_signal
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "chaos.py"


def load_script() -> ModuleType:
    # scripts/ is not a package: load the file the way `python scripts/chaos.py` does.
    spec = importlib.util.spec_from_file_location("chaos", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chaos", module)
    spec.loader.exec_module(module)
    return module


chaos = load_script()
BRIDGES = ["bridge-1", "bridge-2"]


def test_every_kind_of_fault_comes_once_before_any_comes_twice() -> None:
    kinds = list(chaos.FAULT_KINDS)
    faults = chaos.fault_schedule(random.Random(1), 20, BRIDGES, kinds)
    assert len(faults) == 20
    assert sorted(fault.kind for fault in faults[: len(kinds)]) == sorted(kinds)
    assert all(fault.target in BRIDGES for fault in faults if "bridge" in fault.kind)
    assert all(fault.target == "" for fault in faults if "bridge" not in fault.kind)
    assert 10 <= faults[0].gap_s <= 20
    assert all(2 <= fault.gap_s <= 8 for fault in faults[1:])


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    kinds = list(chaos.FAULT_KINDS)
    first = chaos.fault_schedule(random.Random(7), 20, BRIDGES, kinds)
    assert chaos.fault_schedule(random.Random(7), 20, BRIDGES, kinds) == first
    assert chaos.fault_schedule(random.Random(8), 20, BRIDGES, kinds) != first


def test_fewer_faults_than_kinds_are_all_different() -> None:
    faults = chaos.fault_schedule(random.Random(3), 4, BRIDGES, list(chaos.FAULT_KINDS))
    assert len({fault.kind for fault in faults}) == 4


def test_the_crash_loop_is_issue_13s() -> None:
    """kill -9 at +33 s, then six hits on the restarted bridge: kill -9 twice, SIGTERM four
    times, three of them within a second of the restart (during the join)."""
    for seed in range(20):
        (loop,) = chaos.crash_loop_schedule(random.Random(seed), "bridge-1")
        assert loop.gap_s == 33.0
        assert sorted(kind for kind, _, _ in loop.hits) == ["kill", "kill", "term", "term", "term", "term"]
        assert sum(joining for _, _, joining in loop.hits) == 3
        assert all(delay <= 1.0 for _, delay, joining in loop.hits if joining)
        assert all(delay <= 3.0 for _, delay, _ in loop.hits)


def test_every_malformed_record_is_refused_by_the_bridge() -> None:
    now_ms = int(time.time() * 1000)
    limits = Limits(max_bytes=65_536, max_age_ms=7 * 86_400_000, max_skew_ms=300_000)
    rng = random.Random(5)
    for offset in range(300):
        record = chaos.malformed_record(rng, now_ms)
        decoded = decode_signal(record, topic="t", partition=0, offset=offset, now_ms=now_ms, limits=limits)
        assert isinstance(decoded, Rejection), record[:80]


def test_the_summary_line_reads_back() -> None:
    line = chaos.summary_line(
        sent=20_000, stored=20_000, lost=0, dup=0, kept=200, expected=200, faults=9, recoveries=[3.25, 12.0, 7.5]
    )
    assert line == "chaos: sent=20000 stored=20000 lost=0 dup=0 dead_letters=200/200 faults=9 max_recovery_s=12.0"
    assert chaos.LAST_LINE.match(line)
    never = chaos.summary_line(sent=1, stored=1, lost=0, dup=0, kept=0, expected=0, faults=2, recoveries=[3.0, None])
    assert never.endswith("max_recovery_s=none")


@pytest.mark.parametrize(
    ("end", "waiting", "now", "expected"),
    [
        ({0: 10, 1: 20}, {0, 1}, {0: 10, 1: 25}, True),
        ({0: 10, 1: 20}, {0, 1}, {0: 10, 1: 19}, False),  # one partition not there yet
        ({0: 10, 1: 20}, {0}, {0: 10, 1: 3}, True),  # partition 1 had nothing waiting
        ({0: 10}, {0}, {}, False),
        ({0: 10}, set(), {}, True),
    ],
)
def test_recovered_when_every_waiting_partition_is_committed_to_its_end(
    end: dict[int, int], waiting: set[int], now: dict[int, int], expected: bool
) -> None:
    assert chaos.caught_up(end, waiting, now) is expected


@pytest.mark.parametrize(
    ("first_read", "waiting", "now", "expected"),
    [
        ({0: 10, 1: 20}, {0, 1}, {0: 11, 1: 21}, True),
        ({0: 10, 1: 20}, {0, 1}, {0: 10, 1: 21}, False),  # partition 0: only what came before
        ({0: 10, 1: 20}, {1}, {0: 3, 1: 21}, True),  # partition 0 had nothing waiting
        ({1: 20}, {0, 1}, {0: 50, 1: 21}, False),  # nothing read from partition 0 since the fault
    ],
)
def test_consuming_again_needs_a_batch_read_after_the_fault_committed_on_every_waiting_partition(
    first_read: dict[int, int], waiting: set[int], now: dict[int, int], expected: bool
) -> None:
    assert chaos.consuming_again(first_read, waiting, now) is expected


def test_first_reads_come_from_the_bridges_batch_lines() -> None:
    log = "\n".join(
        [
            "2026-12-02 06:36:50,256 INFO bridge.consumer: batch 39-42: 130 events, 1 dead letters from "
            "signal-events [0]@7292-7361 [1]@7263-7323; to store and detect",
            "2026-12-02 06:36:50,263 INFO bridge.consumer: committed signal-events [0]@7292 [1]@7263, done with 39-41",
            "2026-12-02 06:36:50,456 INFO bridge.consumer: batch 39-43: 60 events, 0 dead letters from "
            "signal-events [1]@7324-7383 [2]@5-9; to store and detect",
            "2026-12-02 06:36:51,001 INFO signals_app.services: dead letter signal-events[3]@9999-1: not JSON",
        ]
    )
    assert chaos.first_reads(log) == {0: 7292, 1: 7263, 2: 5}


def test_the_proxy_passes_bytes_holds_them_in_a_partition_and_lets_them_through_after() -> None:
    upstream = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        connection, _ = upstream.accept()
        with connection:
            while data := connection.recv(1024):
                connection.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = chaos.PartitionableProxy(upstream.getsockname()[1])
    try:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        client.sendall(b"before")
        assert client.recv(1024) == b"before"
        proxy.partition()
        client.sendall(b"during")
        client.settimeout(1.0)
        with pytest.raises(TimeoutError):
            client.recv(1024)
        proxy.heal()
        client.settimeout(5.0)
        assert client.recv(1024) == b"during"
        client.close()
    finally:
        proxy.close()
        upstream.close()


def run_chaos(tmp_path: Path, *args: str) -> tuple[re.Match[str], str]:
    """scripts/chaos.py with its own servers, as `make chaos` runs it; its last line, read."""
    command = [sys.executable, str(SCRIPT), *args, "--data-dir", str(tmp_path)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    output = completed.stdout + completed.stderr
    last = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    match = chaos.LAST_LINE.match(last)
    assert match, output
    assert completed.returncode == 0, output
    assert int(match["stored"]) == int(match["sent"]), output
    assert (match["lost"], match["dup"]) == ("0", "0"), output
    assert int(match["expected"]) > 0
    assert match["kept"] == match["expected"], output
    return match, output


# Every kind of fault once, under 1,000 events/s: the bridges' (kill -9, SIGTERM, SIGTERM
# again during the join, SIGSTOP past max.poll.interval.ms), the workers' and the servers'
# (PostgreSQL unreachable for 60 s included). The full run, 20 faults at 5,000/s, is
# `make chaos`.
SHORT_RUN_KINDS = list(chaos.FAULT_KINDS)


@pytest.mark.integration
def test_a_short_chaos_run_loses_nothing_and_recovers_in_time(tmp_path: Path) -> None:
    kinds = ",".join(SHORT_RUN_KINDS)
    match, output = run_chaos(
        tmp_path,
        "--seed",
        "3",
        "--faults",
        str(len(SHORT_RUN_KINDS)),
        "--kinds",
        kinds,
        "--events",
        "20000",
        "--rate",
        "1000",
    )
    assert int(match["sent"]) >= 20_000
    assert int(match["faults"]) == len(SHORT_RUN_KINDS)
    assert float(match["max_recovery"]) <= 30.0, output
    assert output.count("chaos: fault ") == len(SHORT_RUN_KINDS)


@pytest.mark.integration
def test_the_crash_loop_of_issue_13_consumes_again_within_15_s(tmp_path: Path) -> None:
    """kill -9 of the bridge, then six more hits within 30 s of its restarts (kill -9 and
    SIGTERM, some during its join), under a supervisor that restarts it 1 s later."""
    match, output = run_chaos(tmp_path, "--scenario", "crash-loop", "--events", "20000", "--rate", "1000")
    assert float(match["max_recovery"]) <= 15.0, output
    assert output.count("crash loop: ") >= 7, output
