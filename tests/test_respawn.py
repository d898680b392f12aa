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

# A child that answers SIGTERM with a clean exit 0 (as the bridge and the worker do),
# counts its starts in a file, writes its pid, and then does what it is told: crash (exit
# 3) for its first N starts, then either exit 0 or run until SIGTERM.
CHILD = """
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
state = Path(sys.argv[1])
starts = int((state / "starts").read_text()) + 1 if (state / "starts").exists() else 1
(state / "starts").write_text(str(starts))
(state / "pid").write_text(str(os.getpid()))
if starts <= int(sys.argv[2]):
    sys.exit(3)
if sys.argv[3] == "exit":
    sys.exit(0)
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
    time.sleep(0.5)  # it crashes at once, and waits 2 s before the next start
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


def test_under_honcho_a_process_that_dies_is_restarted_and_the_others_go_on(tmp_path: Path) -> None:
    """What `make run` does with the Procfile's lines (docs/operations.md, "Processes that die")."""
    honcho = Path(sys.executable).parent / "honcho"
    crashing, steady = tmp_path / "crashing", tmp_path / "steady"
    crashing.mkdir()
    steady.mkdir()
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "Procfile").write_text(
        f"crashing: exec {sys.executable} {SCRIPT} --name crashing -- {sys.executable} child.py {crashing} 1 run\n"
        f"steady: exec {sys.executable} {SCRIPT} --name steady -- {sys.executable} child.py {steady} 0 run\n"
    )
    runner = subprocess.Popen(
        [str(honcho), "start", "-f", str(tmp_path / "Procfile")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: starts(crashing) == 2, timeout=20, interval=0.05, what="the crashed process restarted")
        assert starts(steady) == 1 and runner.poll() is None, "honcho stopped the others"
        children = [child_pid(crashing), child_pid(steady)]

        stopped_at = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=15)
        assert time.monotonic() - stopped_at < 5
        assert "respawn: crashing exited with status 3" in output
        assert not any(alive(pid) for pid in children)
        assert starts(crashing) == 2 and starts(steady) == 1, "nothing restarted on the way out"
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
