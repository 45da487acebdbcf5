"""Socket Mode end to end: the real `python slack_app.py` with SLACK_APP_TOKEN, driven over a websocket.

The app asks the fake Web API (`SLACK_API_URL`) for a websocket URL with its xapp- token,
connects to the fake Socket Mode server (tests/fake_socket_mode.py), and from then on every
command, click and submission arrives as an envelope that it must ack with its envelope_id.
The worker, Temporal and PostgreSQL are real, as in test_slack_flow.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rolecall import slack_blocks as kit
from rolecall.models import RequestState
from tests.conftest import REPO, Roles, eventually
from tests.fake_slack import (
    ALICE,
    APPROVERS_CHANNEL,
    DBA,
    FakeSlack,
    World,
    action_ids,
    text_of,
    web_client_for,
)
from tests.fake_socket_mode import APP_TOKEN, FakeSocketMode, SocketModeDriver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports a process listens on (its socket inodes in /proc/net/tcp*); None off Linux."""
    fds = Path(f"/proc/{pid}/fd")
    if not fds.is_dir():
        return None
    inodes = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_socket_mode_request_approve_grant(make_stack, roles: Roles, pg, tmp_path: Path) -> None:
    port = free_port()  # [slack].port: must stay closed in Socket Mode
    role, login = roles.role(), roles.login()
    async with contextlib.AsyncExitStack() as exits:
        fake = FakeSlack().start()
        exits.callback(fake.stop)
        fake.add_user(ALICE, f"{login}@example.com", "Alice Example")
        fake.add_user(DBA, "DBA@example.com", "Dana DBA")
        sm = await exits.enter_async_context(FakeSocketMode(fake))
        stack = await make_stack(
            [role],
            ["dba@example.com"],
            slack_client=web_client_for(fake),
            sections={"slack": {"port": port}},
            slack_channel=APPROVERS_CHANNEL,
        )
        env = {
            **os.environ,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_API_URL": fake.url,
            "ROLECALL_CONFIG": str(stack.config_path),
            "ROLECALL_TEMPORAL_ADDRESS": stack.address,
            "ROLECALL_TASK_QUEUE": stack.task_queue,
            "ROLECALL_LOG_FORMAT": "text",
        }
        env.pop("SLACK_SIGNING_SECRET", None)  # not needed in Socket Mode
        log_path = tmp_path / "slack_app.log"
        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "slack_app.py", cwd=REPO, env=env,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip

        def output() -> str:
            return log_path.read_text(encoding="utf-8", errors="replace")

        try:
            await sm.wait_connected(20)
            # It asked the Web API for the URL with its app token, once.
            opened = fake.calls_to("apps.connections.open")
            assert len(opened) == 1 and opened[0].response["ok"], opened
            assert not fake.calls_to("apps.connections.open", ok=False)

            # No HTTP server in Socket Mode: [slack].port is closed, nothing listens at all.
            assert refuses(port), f"port {port} accepts connections in Socket Mode"
            assert listening_ports(proc.pid) in (None, set()), listening_ports(proc.pid)

            driver = SocketModeDriver(sm)
            w = World(fake=fake, slack=driver, stack=stack, login=login, role=role)

            # /p0 help: the answer travels back in the ack's payload.
            r = await driver.command(ALICE, "help")
            assert r.status == 200 and "/p0 request" in r.text
            assert r.json()["response_type"] == "ephemeral"

            # /p0 request: a bare ack, then views.open with that trigger_id and a valid modal.
            r = await driver.command(ALICE, "request")
            assert driver.last is not None
            env_, ack = driver.last
            assert ack.envelope_id == env_.envelope_id and ack.raw == {"envelope_id": env_.envelope_id}
            assert r.text == "" and r.seconds < 3, r
            view = await w.view()  # a successful views.open: the fake validated the view
            assert view["callback_id"] == kit.REQUEST_MODAL
            assert fake.calls_to("views.open", ok=True)[0].args["trigger_id"] == env_.payload["trigger_id"]

            def form(duration: str) -> dict[str, dict[str, Any]]:
                return {
                    kit.B_INSTANCE: {kit.INSTANCE_SELECT: "pg"},
                    kit.B_KIND: {"value": "role"},
                    kit.B_ROLE: {"value": role},
                    kit.B_DURATION: {"value": duration},
                    kit.B_REASON: {"value": "INC-7 over Socket Mode"},
                }

            # A bad submission: the modal's errors come back in the ack.
            r = await driver.submit(ALICE, view, form("99h"))
            assert driver.last[0].accepts_response_payload
            answer = r.json()
            assert answer["response_action"] == "errors" and kit.B_DURATION in answer["errors"], answer

            # A good one: a bare ack closes the modal and the request starts.
            r = await driver.submit(ALICE, view, form("1h"))
            assert r.text == "" and r.seconds < 3, r
            rid = w.rid()
            status = await stack.wait_state(rid, RequestState.PENDING, timeout=10)
            assert status.source == "slack" and status.slack_user_id == ALICE
            assert status.reason == "INC-7 over Socket Mode"
            await eventually(lambda: len(w.posts(APPROVERS_CHANNEL)) == 1, 10, "the approvers' message")
            msg = w.posts(APPROVERS_CHANNEL)[0]
            assert action_ids(msg) == [kit.APPROVE, kit.DENY, kit.PRIVILEGES]

            # The approver clicks Approve: acked, granted, the membership is in PostgreSQL.
            r = await driver.click(DBA, kit.APPROVE, rid, channel=APPROVERS_CHANNEL, ts=msg["ts"])
            assert r.text == "" and not driver.last[0].accepts_response_payload
            status = await stack.wait_state(rid, RequestState.GRANTED, timeout=10)
            assert status.decided_by == "dba@example.com"
            assert pg.is_member(login, role)
            await eventually(lambda: "Granted until" in text_of(w.posts(APPROVERS_CHANNEL)[0]), 10, "update")

            # An Events API envelope too: App Home shows the grant.
            r = await driver.event({"type": "app_home_opened", "user": ALICE, "tab": "home"})
            assert r.text == ""
            home = await w.view("views.publish")
            assert role in text_of(home)

            # Every envelope was acked exactly once, by its envelope_id; nothing else was sent.
            assert not sm.unacknowledged()
            counts = Counter(a.envelope_id for a in sm.acks)
            assert counts == Counter(e.envelope_id for e in sm.sent), counts
            assert sm.other == [] and sm.connections == 1
            assert not [c for c in fake.calls if not c.response.get("ok", True)]
            assert refuses(port)
        finally:
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        out = output()
        # SIGTERM stops it cleanly: exit 0, and it closed its websocket on the way out.
        assert proc.returncode == 0, out
        assert "Traceback" not in out, out
        assert "Socket Mode" in out and "Slack app stopping" in out, out
        await eventually(lambda: not sm.connected, 5, "the app to close its websocket")
