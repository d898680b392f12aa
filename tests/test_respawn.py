"""scripts/respawn.py: the Procfile's restart policy, tried on tiny child processes."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "respawn.py"


def load_script() -> ModuleType:
    # scripts/ is not a package: load the file the way `python scripts/respawn.py` does.
    spec = importlib.util.spec_from_file_location("respawn", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("respawn", module)
    spec.loader.exec_module(module)
    return module


respawn = load_script()

# A child that counts its starts in a file, writes its pid, and then does what it is told:
# crash (exit 3) for its first N starts, then either exit 0 or run until SIGTERM, which it
# answers with a clean exit 0 (as the bridge and the worker do).
CHILD = """
import os, signal, sys, time
from pathlib import Path
state = Path(sys.argv[1])
starts = int((state / "starts").read_text()) + 1 if (state / "starts").exists() else 1
(state / "starts").write_text(str(starts))
(state / "pid").write_text(str(os.getpid()))
if starts <= int(sys.argv[2]):
    sys.exit(3)
if sys.argv[3] == "exit":
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(0.05)
"""


def start(tmp_path: Path, *, crashes: int, then: str) -> subprocess.Popen[str]:
    child = [sys.executable, "-c", CHILD, str(tmp_path), str(crashes), then]
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--name", "tiny", "--", *child],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def child_pid(tmp_path: Path) -> int:
    return int((tmp_path / "pid").read_text())


def starts(tmp_path: Path) -> int:
    path = tmp_path / "starts"
    return int(path.read_text()) if path.exists() else 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running any more.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def test_a_crashing_child_is_restarted_with_back_off_and_a_clean_exit_ends_the_wrapper(tmp_path: Path) -> None:
    wrapper = start(tmp_path, crashes=2, then="exit")
    _, stderr = wrapper.communicate(timeout=30)
    assert wrapper.returncode == 0
    assert starts(tmp_path) == 3
    lines = stderr.splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith("respawn: tiny exited with status 3 after ")
    assert lines[0].endswith("restarting in 1 s (restart 1)")
    assert lines[1].endswith("restarting in 2 s (restart 2)")


def test_a_child_killed_by_a_signal_is_restarted_and_sigterm_stops_both_at_once(tmp_path: Path) -> None:
    wrapper = start(tmp_path, crashes=0, then="run")
    try:
        wait_for(lambda: starts(tmp_path) == 1, timeout=10, interval=0.05, what="the first start")
        first = child_pid(tmp_path)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: starts(tmp_path) == 2, timeout=10, interval=0.05, what="the restart")
        second = child_pid(tmp_path)
        assert second != first
        time.sleep(0.3)  # the child is installing its SIGTERM handler

        stopped_at = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        _, stderr = wrapper.communicate(timeout=10)
        assert time.monotonic() - stopped_at < 2
        assert wrapper.returncode == 0, stderr
        assert not alive(second)
        assert starts(tmp_path) == 2, "a stop that was asked for must not restart the child"
        assert len(stderr.splitlines()) == 1, stderr
        assert "tiny was killed by SIGKILL after " in stderr
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)


def test_sigterm_while_waiting_to_restart_ends_the_wrapper_at_once(tmp_path: Path) -> None:
    wrapper = start(tmp_path, crashes=100, then="exit")
    wait_for(lambda: starts(tmp_path) >= 2, timeout=10, interval=0.05, what="a restart")
    stopped_at = time.monotonic()
    wrapper.send_signal(signal.SIGTERM)
    wrapper.communicate(timeout=10)
    assert time.monotonic() - stopped_at < 1
    assert wrapper.returncode == 0


def test_the_wrapper_killed_takes_its_child_with_it(tmp_path: Path) -> None:
    wrapper = start(tmp_path, crashes=0, then="run")
    wait_for(lambda: starts(tmp_path) == 1, timeout=10, interval=0.05, what="the start")
    child = child_pid(tmp_path)
    os.kill(wrapper.pid, signal.SIGKILL)
    wrapper.communicate(timeout=10)
    wait_for(lambda: not alive(child), timeout=5, interval=0.05, what="the child to die with the wrapper")


@pytest.mark.parametrize(
    ("delay", "ran_for", "expected"),
    [(1.0, 0.5, 2.0), (16.0, 3.0, 30.0), (30.0, 1.0, 30.0), (30.0, 60.0, 1.0)],
)
def test_the_delay_doubles_up_to_a_cap_and_starts_over_after_a_stable_run(
    delay: float, ran_for: float, expected: float
) -> None:
    assert respawn.next_delay(delay, ran_for) == expected


def test_exit_statuses_read_like_a_shell() -> None:
    assert respawn.exit_status(-9) == 137
    assert respawn.exit_status(3) == 3
    assert respawn.how_it_ended(-15) == "was killed by SIGTERM"
    assert respawn.how_it_ended(1) == "exited with status 1"
