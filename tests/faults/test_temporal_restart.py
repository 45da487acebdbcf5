"""The Temporal dev server killed and started again on its SQLite file, with a request
pending and another granted, served by a `rolecall worker` process throughout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client

from rolecall.models import RequestState
from rolecall.temporal import DATA_CONVERTER, dev_server_flags
from tests.conftest import Roles, Stack, eventually, temporal_binary, write_config
from tests.faults.support import assert_no_grant_left_behind, sigkill, worker_process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DevServer:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [temporal_binary(), "server", "start-dev", "--db-filename", str(self.db),
             "--ip", "127.0.0.1", "--port", str(self.port), "--ui-port", str(_free_port()),
             "--headless", "--log-level", "error", *dev_server_flags()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None:
            sigkill(self.proc)

    async def client(self) -> Client:
        deadline = time.monotonic() + 30
        while True:
            try:
                return await Client.connect(self.address, data_converter=DATA_CONVERTER)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


@contextlib.contextmanager
def _cleanup(*things: object) -> Iterator[None]:
    try:
        yield
    finally:
        for t in things:
            if isinstance(t, DevServer):
                t.kill()
            elif isinstance(t, list):
                for p in t:
                    sigkill(p)


async def test_dev_server_killed_and_restarted_on_its_sqlite_file(
    temporal, roles: Roles, pg, tmp_path: Path
) -> None:
    """Server down for 6 s, across the expiry of the granted request.

    Bound: revoked no later than expiry + 6 s (outage) + 15 s (the worker reconnects and
    polls again, plus the 5 s sticky-queue timeout). Measured: about 1 s after the server is back.
    The pending request survives and is approved, granted and relinquished afterwards.
    """
    server = DevServer(tmp_path / "temporal.sqlite")
    workers: list[subprocess.Popen[bytes]] = []
    with _cleanup(server, workers):
        server.start()
        client = await server.client()
        ro, rw, login = roles.role(), roles.role("rw"), roles.login()
        config = write_config(tmp_path / "rolecall.toml", [ro, rw], ["dba@example.com"])
        stack = Stack(client=client, env=temporal, address=server.address,
                      task_queue=f"restart-{uuid.uuid4().hex}", config_path=config, pg=pg)  # fmt: skip
        workers.append(worker_process(config, server.address, stack.task_queue))

        pending = await stack.request(login, rw, "1h")
        granted_id = await stack.request(login, ro, "4s")
        await stack.cli("approve", granted_id, "--as", "dba@example.com")
        granted = await stack.wait_state(granted_id, RequestState.GRANTED, timeout=20)
        assert pg.is_member(login, ro) and not pg.is_member(login, rw)

        server.kill()
        await asyncio.sleep(6)  # the outage itself; the expiry passes meanwhile
        assert pg.is_member(login, ro)
        server.start()  # same port, same SQLite file
        stack.client = await server.client()
        assert workers[0].poll() is None, "the worker died with the server"

        final = await stack.wait_state(granted_id, RequestState.EXPIRED, timeout=30)
        assert final.expires_at == granted.expires_at
        await assert_no_grant_left_behind(stack.client, pg, final, login, ro, timedelta(seconds=6 + 15))

        # The request that was pending when the server went away carries on.
        assert (await stack.status(pending)).state == RequestState.PENDING
        r = await stack.cli("approve", pending, "--as", "dba@example.com")
        assert r.code == 0, r.err
        await stack.wait_state(pending, RequestState.GRANTED, timeout=20)
        assert pg.is_member(login, rw)
        await stack.cli("relinquish", pending, "--as", f"{login}@example.com")
        final = await stack.wait_state(pending, RequestState.RELINQUISHED, timeout=20)
        await eventually(lambda: not pg.is_member(login, rw), 5, "the relinquished role to go")
        await assert_no_grant_left_behind(stack.client, pg, final, login, rw, timedelta(0))
