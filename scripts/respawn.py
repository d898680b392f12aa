"""Run a command and start it again when it dies: the restart policy honcho lacks.

    python scripts/respawn.py [--name NAME] -- <command> [args...]

`make run` starts every process of the Procfile under honcho, which stops all of them as
soon as one exits. Each Procfile line runs its command under this wrapper instead, so a
process that crashes (exits non-zero, or is killed by a signal) is started again, as
systemd's Restart=on-failure or a container's restart policy would, and the others go on
(docs/operations.md, "Processes that die").

- A restart comes RESTART_DELAY_SECONDS after the exit, doubling after each quick crash up
  to MAX_DELAY_SECONDS; a run that lasted STABLE_SECONDS starts the delay over.
- One line on stderr per restart says what exited, how, and when it starts again.
- SIGTERM or SIGINT to the wrapper is passed to the command; the wrapper then waits for it
  and exits with its status, without restarting it. Asked to stop while waiting to
  restart, it exits at once. The command runs in a process group of its own, so that a
  signal honcho sends to the wrapper's group reaches it once, through the wrapper; on
  Linux it is also killed should the wrapper itself be killed.
- A command that exits 0 by itself finished its work: the wrapper exits 0 too.

Standard library only, and no import of the project: it must start even when the
project's settings are broken (the command then says why, once per restart).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

RESTART_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the wrapper dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def exit_status(returncode: int) -> int:
    """A child killed by signal N exits the way a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def next_delay(delay: float, ran_for: float) -> float:
    """The wait before the next restart: back to the first delay after a stable run,
    otherwise twice the last one, capped."""
    if ran_for >= STABLE_SECONDS:
        return RESTART_DELAY_SECONDS
    return min(delay * 2, MAX_DELAY_SECONDS)


class Respawner:
    def __init__(self, command: list[str], name: str) -> None:
        self.command = command
        self.name = name
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.restarts = 0

    def on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def say(self, line: str) -> None:
        print(f"respawn: {self.name} {line}", file=sys.stderr, flush=True)

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_stop_signal)
        delay = RESTART_DELAY_SECONDS
        while True:
            started = time.monotonic()
            try:
                self.child = subprocess.Popen(self.command, process_group=0, preexec_fn=die_with_parent)
            except OSError as error:
                self.say(f"cannot start: {error}")
                return 127
            if self.stopping.is_set():  # asked to stop while it was being started
                self.child.terminate()
            returncode = self.child.wait()
            ran_for = time.monotonic() - started
            if self.stopping.is_set():
                return exit_status(returncode)
            if returncode == 0:
                return 0
            delay = next_delay(delay, ran_for) if self.restarts else RESTART_DELAY_SECONDS
            self.restarts += 1
            self.say(
                f"{how_it_ended(returncode)} after {ran_for:.1f} s; "
                f"restarting in {delay:.0f} s (restart {self.restarts})"
            )
            if self.stopping.wait(delay):
                return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: respawn.py [--name NAME] -- <command> [args...]", file=sys.stderr)
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="respawn.py")
    parser.add_argument("--name", default=None, help="what the restart lines call the command")
    options = parser.parse_args(args[:split])
    command = args[split + 1 :]
    if not command:
        parser.error("no command after --")
    return Respawner(command, options.name or command[0]).run()


if __name__ == "__main__":
    sys.exit(main())
