"""`make run`: the whole product on one machine, state kept under .rolecall/.

Starts the Temporal dev server (UI on :8233, SQLite file, rolecall's search attributes),
an embedded demo PostgreSQL seeded from deploy/demo.sql, the worker, and the Slack app when
its tokens are set. Ctrl-C stops all of it; the next start finds the earlier requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from rolecall.temporal import dev_server_flags

ROOT = Path.cwd()
STATE = ROOT / ".rolecall"
TEMPORAL_PORT = int(os.environ.get("ROLECALL_DEV_TEMPORAL_PORT", "7233"))
UI_PORT = int(os.environ.get("ROLECALL_DEV_UI_PORT", "8233"))


def say(message: str) -> None:
    print(f"[rolecall] {message}", flush=True)


def ensure_config() -> Path:
    config = Path(os.environ.get("ROLECALL_CONFIG", "rolecall.toml"))
    if not config.exists():
        shutil.copyfile(ROOT / "rolecall.example.toml", config)
        say(f"created {config} from rolecall.example.toml (edit it to add your instances)")
    return config


def start_postgres(config: Path) -> str:
    import pgserver

    server = pgserver.get_server(STATE / "pg", cleanup_mode="stop")
    dsn = str(server.get_uri())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((ROOT / "deploy" / "demo.sql").read_text(encoding="utf-8").encode())
        admin_dsn = _least_privilege_login(conn, dsn, config)
    say(f"demo PostgreSQL ready: psql '{dsn.replace('postgres:@', 'alice@')}' (as alice)")
    return admin_dsn


def _least_privilege_login(conn: psycopg.Connection[Any], dsn: str, config: Path) -> str:
    """rolecall's demo login, made by the same SQL `rolecall setup-sql` prints for users."""
    from psycopg.conninfo import make_conninfo

    from rolecall.config import load
    from rolecall.pgadmin import DEFAULT_LOGIN, setup_sql

    demo = load(config).instances.get("demo")
    if demo is None:
        return dsn
    roles = [
        r for r in demo.roles if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [r]).fetchone()
    ]
    script = setup_sql(demo, roles, conn.info.server_version, DEFAULT_LOGIN)
    for statement in script.split(";\n"):
        body = "\n".join(line for line in statement.splitlines() if not line.startswith("--")).strip()
        if body:
            with contextlib.suppress(psycopg.errors.DuplicateObject):
                conn.execute(body.encode())
    return make_conninfo(dsn, user=DEFAULT_LOGIN)


def start_temporal() -> subprocess.Popen[bytes]:
    binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    cmd = [
        binary,
        "server",
        "start-dev",
        "--port",
        str(TEMPORAL_PORT),
        "--ui-port",
        str(UI_PORT),
        "--db-filename",
        str(STATE / "temporal.db"),
        "--log-level",
        "warn",
        *dev_server_flags(),
    ]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + 30
    while not _temporal_ready():
        if proc.poll() is not None:
            raise SystemExit(f"rolecall: the Temporal dev server exited ({proc.returncode})")
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit("rolecall: the Temporal dev server did not start within 30 s")
        time.sleep(0.2)
    added = _register_search_attributes()
    if added:
        # The server caches its search attributes (dev_server_flags) and would refuse the new
        # ones for a while; a restart loads them, and finds nothing more to add.
        say(f"registered search attributes: {', '.join(added)}; restarting the dev server")
        proc.terminate()
        proc.wait(timeout=30)
        return start_temporal()
    say(f"Temporal dev server on localhost:{TEMPORAL_PORT}, UI at http://localhost:{UI_PORT}")
    return proc


def _register_search_attributes() -> list[str]:
    """The start-dev flags register attributes only in a new database file; an existing one
    (from an earlier `make run`) gets attributes added since then here, as a cluster would."""
    from rolecall.config import Settings
    from rolecall.setup import register_search_attributes
    from rolecall.temporal import connect

    async def register() -> list[str]:
        client = await connect(Settings(temporal_address=f"localhost:{TEMPORAL_PORT}"))
        return await register_search_attributes(client, "default")

    return asyncio.run(register())


def _temporal_ready() -> bool:
    from rolecall.config import Settings
    from rolecall.temporal import connect

    async def probe() -> bool:
        try:
            client = await connect(Settings(temporal_address=f"localhost:{TEMPORAL_PORT}"))
            await client.service_client.check_health()
            return True
        except Exception:
            return False

    return asyncio.run(probe())


def main() -> int:
    STATE.mkdir(exist_ok=True)
    config = ensure_config()
    env = dict(os.environ)
    env["ROLECALL_CONFIG"] = str(config)
    env["ROLECALL_TEMPORAL_ADDRESS"] = f"localhost:{TEMPORAL_PORT}"
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    # Python raises KeyboardInterrupt on SIGINT only when SIGINT was not ignored at its start;
    # a shell without job control (a script's `make run &`, some supervisors) starts it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        env["ROLECALL_DEMO_DSN"] = start_postgres(config)
        children.append(start_temporal())
        children.append(subprocess.Popen([sys.executable, "-m", "rolecall.cli", "worker"], env=env))
        if env.get("SLACK_BOT_TOKEN"):
            children.append(subprocess.Popen([sys.executable, "slack_app.py"], env=env))
        else:
            say("Slack app not started: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (docs/slack.md)")
        say(
            "try it in another shell:\n"
            f"  export ROLECALL_DEMO_DSN='{env['ROLECALL_DEMO_DSN']}'   # for doctor, setup-sql\n"
            "  .venv/bin/rolecall request --instance demo --role analytics_ro --duration 15m "
            "--reason 'look at orders' --as alice@example.com\n"
            "  .venv/bin/rolecall approve 'access/demo/analytics_ro/alice@example.com' "
            "--as dba@example.com\n"
            "  .venv/bin/rolecall list\n"
            "Ctrl-C stops everything."
        )
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    say(f"{child.args!r} exited with {child.returncode}; stopping")
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping")
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in reversed(children):
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
