"""Unit tests for the pure parts of scripts/devservices.py (no servers are started)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "devservices.py"


def load_script() -> ModuleType:
    # scripts/ is not a package: load the file the way `python scripts/devservices.py` does.
    spec = importlib.util.spec_from_file_location("devservices", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("devservices", module)
    spec.loader.exec_module(module)
    return module


devservices = load_script()


@pytest.mark.parametrize(
    ("argv", "options", "command"),
    [
        (["--data-dir", "d", "--", "honcho", "start"], ["--data-dir", "d"], ["honcho", "start"]),
        (["--", "env"], [], ["env"]),
        # Only the first `--` is ours; later ones belong to the command.
        (["--fresh", "--", "pytest", "--", "-k", "x"], ["--fresh"], ["pytest", "--", "-k", "x"]),
        (["--data-dir", "d"], ["--data-dir", "d"], []),
        (["--"], [], []),
    ],
)
def test_split_argv(argv: list[str], options: list[str], command: list[str]) -> None:
    assert devservices.split_argv(argv) == (options, command)


def test_main_refuses_a_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        devservices.main(["--data-dir", "d"])
    assert exit_info.value.code == 2
    assert "after `--`" in capsys.readouterr().err


def test_main_refuses_an_unknown_option() -> None:
    with pytest.raises(SystemExit) as exit_info:
        devservices.main(["--datadir", "d", "--", "env"])
    assert exit_info.value.code == 2


def test_parser_defaults_to_the_run_data_dir_without_fresh() -> None:
    arguments = devservices.build_parser().parse_args([])
    assert arguments.data_dir == Path(".data/run")
    assert arguments.fresh is False


def test_choose_port_takes_the_standard_port_when_free() -> None:
    assert devservices.choose_port(5432, lambda port: True, lambda: 40000) == 5432


def test_choose_port_asks_the_os_when_the_standard_port_is_taken() -> None:
    asked: list[int] = []

    def taken(port: int) -> bool:
        asked.append(port)
        return False

    assert devservices.choose_port(5432, taken, lambda: 40000) == 40000
    assert asked == [5432]


def test_port_is_free_sees_a_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert devservices.port_is_free(port) is False


def test_any_free_port_can_be_bound() -> None:
    assert devservices.port_is_free(devservices.any_free_port()) is True


def test_urls() -> None:
    assert devservices.kafka_bootstrap(9092) == "127.0.0.1:9092"
    assert devservices.database_url(5432) == "postgres://postgres@127.0.0.1:5432/eventpipeline"
    assert devservices.database_url(5433, "postgres") == "postgres://postgres@127.0.0.1:5433/postgres"
    assert devservices.redis_url(6379) == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("postgres://app:s3cret@db:5432/x", "postgres://app:***@db:5432/x"),
        ("postgres://root@127.0.0.1:5432/postgres", "postgres://root@127.0.0.1:5432/postgres"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("127.0.0.1:9092,other:9092", "127.0.0.1:9092,other:9092"),
    ],
)
def test_redact_hides_only_the_password(url: str, printed: str) -> None:
    assert devservices.redact(url) == printed


def test_socket_dir_is_the_data_dir_up_to_the_socket_path_limit() -> None:
    # "/" + ".s.PGSQL.5432" is 14 bytes: a 93-byte data dir makes a 107-byte socket path.
    pgdata = Path("/" + "a" * 92)
    assert devservices.socket_dir_for(pgdata, 5432) == pgdata


def test_socket_dir_falls_back_to_a_short_dir_past_the_limit() -> None:
    pgdata = Path("/" + "a" * 93)
    fallback = devservices.socket_dir_for(pgdata, 5432, fallback_root=Path("/tmp"))
    assert fallback.parent == Path("/tmp")
    assert fallback.name.startswith("eventpipeline-pg-")
    assert len(str(fallback / ".s.PGSQL.65535")) <= devservices.MAX_SOCKET_PATH_BYTES


def test_socket_dir_fallback_differs_per_data_dir() -> None:
    first = devservices.socket_dir_for(Path("/" + "a" * 100), 5432)
    second = devservices.socket_dir_for(Path("/" + "b" * 100), 5432)
    assert first != second
    assert first == devservices.socket_dir_for(Path("/" + "a" * 100), 5432)


def test_socket_dir_counts_the_port_digits() -> None:
    pgdata = Path("/" + "a" * 92)
    assert devservices.socket_dir_for(pgdata, 54321) != pgdata


@pytest.mark.parametrize(("returncode", "exit_code"), [(0, 0), (3, 3), (-15, 143), (-2, 130), (-9, 137)])
def test_exit_code_of(returncode: int, exit_code: int) -> None:
    assert devservices.exit_code_of(returncode) == exit_code


def test_tail_keeps_the_last_lines() -> None:
    text = "\n".join(f"line {number}" for number in range(30))
    assert devservices.tail(text, 3) == "line 27\nline 28\nline 29"
    assert devservices.tail("only\n", 3) == "only"
    assert devservices.tail("", 3) == "(nothing was logged)"


def test_shown_is_relative_below_the_working_directory() -> None:
    assert devservices.shown(Path("/repo/.data/run/postgres"), Path("/repo")) == Path(".data/run/postgres")
    assert devservices.shown(Path("/tmp/ds/postgres"), Path("/repo")) == Path("/tmp/ds/postgres")


def test_status_line_aligns_columns() -> None:
    assert (
        devservices.status_line("redis", "started", "redis://127.0.0.1:6379/0")
        == "devservices: redis    started    redis://127.0.0.1:6379/0"
    )
    assert devservices.status_line("kafka", "stopped", "") == "devservices: kafka    stopped"


@pytest.mark.parametrize(
    "log_line",
    [
        'ERROR tansu_broker::broker: err=Os { code: 98, kind: AddrInUse, message: "Address in use" }',
        "# Could not create server TCP listening socket 127.0.0.1:6379: bind: Address already in use",
        'LOG:  could not bind IPv4 address "127.0.0.1": Address already in use',
    ],
)
def test_address_in_use_is_recognised_in_each_servers_log(log_line: str) -> None:
    assert devservices.ADDRESS_IN_USE.search(log_line)


def test_other_start_failures_are_not_taken_for_a_busy_port() -> None:
    assert not devservices.ADDRESS_IN_USE.search('FATAL:  data directory "/x" has invalid permissions')


def test_development_settings_fill_in_only_what_is_unset(tmp_path: Path) -> None:
    made = devservices.development_settings(tmp_path, {"DEBUG": "false"})
    assert set(made) == {"SECRET_KEY", "FLOWER_BASIC_AUTH"}, "DEBUG=false is the user's choice"
    assert len(made["SECRET_KEY"]) >= 40
    user, _, password = made["FLOWER_BASIC_AUTH"].partition(":")
    assert user == "flower" and len(password) >= 40
    assert devservices.development_settings(tmp_path, {}) == {"DEBUG": "true", **made}, "kept for the next run"
    assert (tmp_path / "secret-key").stat().st_mode & 0o077 == 0, "readable by its owner only"
    given = {"DEBUG": "true", "SECRET_KEY": "mine", "FLOWER_BASIC_AUTH": "me:mine"}
    assert devservices.development_settings(tmp_path / "other", given) == {}
    assert not (tmp_path / "other").exists()


def test_another_terminal_gets_the_same_servers_and_settings_from_the_env_file(tmp_path: Path) -> None:
    """What bootstrap prints for another terminal works: `set -a; . <data dir>/env; set +a`
    gives a manage.py command the URLs and the development settings, secrets included,
    where without it the command stops at SECRET_KEY."""
    env_file = tmp_path / "env"
    values = {"DATABASE_URL": "postgres://u:p@127.0.0.1:1/x", "DEBUG": "true", "SECRET_KEY": "it's a secret $HOME"}
    devservices.env_file_write(env_file, values)
    assert env_file.stat().st_mode & 0o777 == 0o600
    clean = {key: value for key, value in os.environ.items() if key not in {"SECRET_KEY", "DEBUG", "DATABASE_URL"}}
    command = f'{sys.executable} -c \'import os; print(os.environ["SECRET_KEY"], os.environ["DATABASE_URL"])\''
    shown = subprocess.run(
        ["sh", "-c", f"set -a; . {env_file}; set +a; {command}"], env=clean, capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "it's a secret $HOME postgres://u:p@127.0.0.1:1/x"
    check = [sys.executable, "manage.py", "check", "--fail-level", "ERROR"]
    sourced = subprocess.run(
        ["sh", "-c", f"set -a; . {env_file}; set +a; exec \"$@\"", "sh", *check],
        env=clean, cwd=SCRIPT.parent.parent, capture_output=True, text=True,
    )  # fmt: skip
    assert sourced.returncode == 0, sourced.stderr
    bare = subprocess.run(check, env=clean, cwd=SCRIPT.parent.parent, capture_output=True, text=True)
    assert bare.returncode != 0 and "SECRET_KEY" in bare.stderr


def test_pids_variable_names_each_server_started() -> None:
    started = {"postgres": 123, "redis": 456, "kafka": 789}
    assert devservices.pids_variable(started) == "postgres=123,redis=456,kafka=789"
    assert devservices.pids_variable({}) == ""


def test_the_command_is_told_the_servers_started_by_pid_and_not_those_given_by_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEVSERVICES_PIDS lists the servers this run started (scripts/bench.py counts their
    CPU), not one given by URL, and replaces a value inherited from an outer run."""
    pids = {"postgres": 101, "redis": 202, "kafka": 303}

    def started(service: Any, stack: contextlib.ExitStack) -> Any:
        # Stands in for a real start: of the process, only its pid is read.
        return devservices.Running(service, SimpleNamespace(pid=pids[service.name]), 5)

    monkeypatch.setattr(devservices, "start_service", started)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("DEVSERVICES_PIDS", "postgres=1,redis=2,kafka=3")
    with contextlib.ExitStack() as stack:
        environment = devservices.start_missing_services(tmp_path, False, stack)
    assert environment["DEVSERVICES_PIDS"] == "postgres=101,kafka=303"
    assert environment["REDIS_URL"] == "redis://127.0.0.1:1/0"

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgres://u@127.0.0.1:1/x")
    with contextlib.ExitStack() as stack:
        environment = devservices.start_missing_services(tmp_path, False, stack)
    assert environment["DEVSERVICES_PIDS"] == "", "all given by URL: none started, none listed"
