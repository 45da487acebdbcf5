"""`make run`'s stack, as a real process: request, approve, Ctrl-C, start again, still there."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from rolecall.models import RequestState
from tests.conftest import REPO
from tests.worker_process import free_port


def _start(cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rolecall.devstack"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Started with SIGINT ignored, as a shell without job control starts `make run &`:
        # Ctrl-C must stop it all the same.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            # Keep reading: the stack and its children write to this pipe until they exit, and
            # a full pipe would block them (a stop that never ends).
            threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
            return proc, lines
    proc.kill()
    raise AssertionError("make run's stack did not come up:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str], lines: list[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("make run's stack did not stop within 30 s:\n" + "".join(lines[-80:])) from None
    finally:
        if proc.poll() is None:
            proc.kill()


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rolecall.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_make_run_stack_grants_and_keeps_requests_across_restarts(tmp_path: Path) -> None:
    shutil.copy(REPO / "rolecall.example.toml", tmp_path)
    (tmp_path / "deploy").mkdir()
    shutil.copy(REPO / "deploy" / "demo.sql", tmp_path / "deploy")
    port = free_port()
    env = dict(os.environ)
    env.pop("SLACK_BOT_TOKEN", None)
    env.update(
        ROLECALL_DEV_TEMPORAL_PORT=str(port),
        ROLECALL_DEV_UI_PORT=str(free_port()),
        ROLECALL_TEMPORAL_ADDRESS=f"localhost:{port}",
        ROLECALL_CONFIG=str(tmp_path / "rolecall.toml"),
    )
    proc, lines = _start(tmp_path, env)
    rid = "access/demo/analytics_ro/alice@example.com"
    alice = f"postgresql://alice@/postgres?host={tmp_path / '.rolecall' / 'pg'}"
    try:
        assert (tmp_path / "rolecall.toml").exists()  # created from the example
        r = _cli(env, tmp_path, "request", "--instance", "demo", "--role", "analytics_ro",
                 "--duration", "15m", "--reason", "look at orders", "--as", "alice@example.com")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == rid
        r = _cli(env, tmp_path, "approve", rid, "--as", "dba@example.com")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(alice) as conn:
                    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (5,)
                break
            except psycopg.errors.InsufficientPrivilege:
                assert time.monotonic() < deadline, "alice never got analytics_ro"
                time.sleep(0.2)
        # The demo's admin login is the least-privilege one `rolecall setup-sql` describes.
        dsn_line = next(line for line in lines if "export ROLECALL_DEMO_DSN=" in line)
        assert "user=rolecall_admin" in dsn_line
        # As if this database came from a release without RolecallApprovers: the next start
        # adds it, and restarts the server so that its cache holds it.
        removed = _temporal(
            port, "operator", "search-attribute", "remove", "--name", "RolecallApprovers", "--yes"
        )
        assert removed.returncode == 0, removed.stderr
    finally:
        assert _stop(proc, lines) == 0

    proc, lines = _start(tmp_path, env)  # the same state directory: the request is still there
    try:
        assert any("registered search attributes: RolecallApprovers; restarting" in line for line in lines)
        r = _cli(env, tmp_path, "status", rid, "--json")
        assert r.returncode == 0, r.stderr
        assert f'"state": "{RequestState.GRANTED.value}"' in r.stdout
        r = _cli(env, tmp_path, "relinquish", rid, "--as", "alice@example.com")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 20
        while _cli(env, tmp_path, "status", rid, "--json").stdout.count('"relinquished"') == 0:
            assert time.monotonic() < deadline, "never relinquished"
            time.sleep(0.3)
        with psycopg.connect(alice) as conn, conn.cursor() as cur:
            try:
                cur.execute("SELECT count(*) FROM orders")
                raise AssertionError("alice can still read orders")
            except psycopg.errors.InsufficientPrivilege:
                pass
        # A new request sets the re-added attribute (its check upserts the approvers).
        r = _cli(env, tmp_path, "request", "--instance", "demo", "--role", "analytics_ro",
                 "--duration", "15m", "--reason", "look again", "--as", "alice@example.com")  # fmt: skip
        assert r.returncode == 0, r.stderr
        query = (
            f'RolecallApprovers = "dba@example.com" AND WorkflowId = "{rid}" AND ExecutionStatus = "Running"'
        )
        deadline = time.monotonic() + 20
        while rid not in _temporal(port, "workflow", "list", "--query", query).stdout:
            assert time.monotonic() < deadline, "the new request never showed its approvers"
            time.sleep(0.3)
    finally:
        assert _stop(proc, lines) == 0


def _temporal(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    return subprocess.run(
        [binary, *args, "--address", f"localhost:{port}"], capture_output=True, text=True, timeout=30
    )
