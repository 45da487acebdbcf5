"""Slack's side of Socket Mode, locally: `apps.connections.open` and the websocket.

The wire, as slack_sdk's Socket Mode client (slack_sdk/socket_mode/) speaks it:

1. The app calls `apps.connections.open` on the Web API with its app-level token
   (`Authorization: Bearer xapp-...`) and gets `{"ok": true, "url": "wss://..."}`.
2. It opens a websocket to that URL; Slack sends `{"type": "hello", ...}` first.
3. Slack sends envelopes `{"envelope_id", "type": "slash_commands" | "interactive" |
   "events_api", "payload", "accepts_response_payload"}`; the app answers each with
   `{"envelope_id": ..., "payload": ...}` (payload only when there is something to say:
   a modal's `response_action`, a command's ephemeral reply).

`FakeSocketMode(fake)` runs the websocket server on the running event loop and hooks
itself into a `FakeSlack` for step 1. `SocketModeDriver` is a `SlackDriver` whose commands,
interactions and events travel as envelopes; its replies are the acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from tests.fake_slack import FakeSlack, Reply, SlackDriver

APP_ID = "AROLECALL"
APP_TOKEN = "xapp-1-AROLECALL-1-0123456789-socketmodetest"


@dataclass
class Envelope:
    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    at: float  # time.monotonic() when sent


@dataclass
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None
    at: float  # time.monotonic() when received
    raw: dict[str, Any]


class FakeSocketMode:
    """The websocket end of Socket Mode; `async with FakeSocketMode(fake) as sm:`."""

    def __init__(self, fake: FakeSlack, app_token: str = APP_TOKEN) -> None:
        assert app_token.startswith("xapp-"), "Socket Mode needs an app-level token"
        self.fake = fake
        self.app_token = app_token
        self.opens: list[dict[str, Any]] = []  # apps.connections.open answers
        self.connections = 0  # websockets that got their hello
        self.sent: list[Envelope] = []
        self.acks: list[Ack] = []
        self.other: list[str] = []  # text frames from the app that are not acks
        self._tickets: set[str] = set()
        self._lock = threading.Lock()  # apps.connections.open runs on the fake's threads
        self._ws: web.WebSocketResponse | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._changed = asyncio.Event()

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> FakeSocketMode:
        app = web.Application()
        app.router.add_get("/link/", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self.fake.socket_mode = self
        return self

    async def stop(self) -> None:
        self.fake.socket_mode = None
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSocketMode:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- step 1: apps.connections.open (called by FakeSlack, on its HTTP threads) ---------

    def connections_open(self, auth: str) -> dict[str, Any]:
        token = auth.removeprefix("Bearer ").strip() if auth else ""
        if not token:
            return {"ok": False, "error": "not_authed"}
        if not token.startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        if token != self.app_token:
            return {"ok": False, "error": "invalid_auth"}
        ticket = uuid.uuid4().hex
        answer = {"ok": True, "url": f"ws://127.0.0.1:{self._port}/link/?ticket={ticket}&app_id={APP_ID}"}
        with self._lock:
            self._tickets.add(ticket)
            self.opens.append(answer)
        return answer

    # ---- step 2 and 3: the websocket -----------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._lock:
            valid = ticket in self._tickets
            self._tickets.discard(ticket)  # a URL is good for one connection
        if not valid:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse()  # answers the client's pings (autoping)
        await ws.prepare(request)
        self._sockets.add(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets),
                "debug_info": {"host": "applink-fake", "approximate_connection_time": 18060},
                "connection_info": {"app_id": APP_ID},
            }
        )
        self._ws = ws
        self.connections += 1
        self._notify()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    data = None
                if isinstance(data, dict) and "envelope_id" in data:
                    ack = Ack(str(data["envelope_id"]), data.get("payload"), time.monotonic(), data)
                    self.acks.append(ack)
                else:
                    self.other.append(str(msg.data))
                self._notify()
        finally:
            self._sockets.discard(ws)
            if self._ws is ws:
                self._ws = None
            self._notify()
        return ws

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, 0.5))

    # ---- for tests -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def wait_connected(self, timeout: float = 20) -> None:
        await self._until(lambda: self.connected, timeout, "the app's Socket Mode connection")

    async def send(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = False,
        **extra: Any,
    ) -> Envelope:
        """Push one envelope to the connected app."""
        if self._ws is None or self._ws.closed:
            raise AssertionError("no app is connected over Socket Mode")
        env = Envelope(uuid.uuid4().hex, type_, payload, accepts_response_payload, time.monotonic())
        self.sent.append(env)
        await self._ws.send_json(
            {
                "envelope_id": env.envelope_id,
                "payload": payload,
                "type": type_,
                "accepts_response_payload": accepts_response_payload,
                **extra,
            }
        )
        return env

    def acks_of(self, envelope_id: str) -> list[Ack]:
        return [a for a in self.acks if a.envelope_id == envelope_id]

    async def ack(self, envelope: Envelope, timeout: float = 5) -> Ack:
        """The app's ack of `envelope`, waiting for it (Slack allows 3 s)."""
        found = await self._until(
            lambda: self.acks_of(envelope.envelope_id), timeout, f"the ack of {envelope.type} envelope"
        )
        return found[0]

    def unacknowledged(self) -> list[Envelope]:
        acked = {a.envelope_id for a in self.acks}
        return [e for e in self.sent if e.envelope_id not in acked]


class SocketModeDriver(SlackDriver):
    """The SlackDriver's commands, clicks, submissions and events, as Socket Mode envelopes.

    Each returns the ack as a `Reply`: status 200, the ack's payload as JSON text (empty
    for a bare ack), seconds from envelope to ack. An envelope not acked in time fails.
    """

    def __init__(self, socket: FakeSocketMode, timeout: float = 5) -> None:
        super().__init__("socket-mode", socket.fake)
        self.socket = socket
        self.timeout = timeout
        self.last: tuple[Envelope, Ack] | None = None

    async def envelope(self, type_: str, payload: dict[str, Any], accepts: bool, **extra: Any) -> Reply:
        env = await self.socket.send(type_, payload, accepts_response_payload=accepts, **extra)
        ack = await self.socket.ack(env, self.timeout)
        self.last = (env, ack)
        text = json.dumps(ack.payload) if ack.payload else ""
        return Reply(200, text, ack.at - env.at)

    async def post(self, body: str, content_type: str, **kw: Any) -> Reply:
        raise NotImplementedError("nothing is posted to the app in Socket Mode")

    async def command(self, user: str, text: str, **kw: Any) -> Reply:
        return await self.envelope("slash_commands", self.command_payload(user, text, **kw), True)

    async def interaction(self, payload: dict[str, Any], **kw: Any) -> Reply:
        # Slack takes a response payload only where one means something (modal answers).
        accepts = payload.get("type") in ("view_submission", "block_suggestion")
        return await self.envelope("interactive", payload, accepts)

    async def event(self, event: dict[str, Any], **kw: Any) -> Reply:
        body = {
            "token": "legacy-verification-token",
            "team_id": self.team,
            **({"enterprise_id": self.enterprise} if self.enterprise else {}),
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:10]}",
            "event_time": int(time.time()),
        }
        return await self.envelope("events_api", body, False, retry_attempt=0, retry_reason="")
