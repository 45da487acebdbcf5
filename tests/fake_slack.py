"""A local Slack Web API: a real HTTP server (in a thread) that answers like Slack.

It records every call, keeps the messages and views it was given (so `chat.update` of an
unknown message fails like Slack's `message_not_found`), validates every `blocks` and
`view` payload with slack_sdk's models, and can be told to answer 429 + Retry-After, 500,
or to hang, for chosen methods, or (`rate_limit`) to throttle messages per channel as Slack
does. Point a client at it with `base_url=fake.url`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from tests.fake_http import FakeServer

TEAM = "T0ROLECALL"
BOT_USER = "UBOT"
# For tests of who may act: another workspace, and Enterprise Grid organisations.
OTHER_TEAM = "T0ELSEWHERE"
ENTERPRISE = "E0ROLECALL"
OTHER_ENTERPRISE = "E0ELSEWHERE"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    at: float
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    status: int  # 429, 500, or 0 for "hang"
    times: int
    retry_after: int = 1
    hang_seconds: float = 0.0


# chat.postMessage's special tier: about one message per second per channel, short bursts
# allowed; rate_limit() applies it to these methods, keyed by their `channel` argument.
RATE_LIMITED_METHODS = ("chat.postMessage", "chat.update", "chat.postEphemeral")


@dataclass
class _Bucket:
    """A token bucket: `tokens` as of `at` (monotonic), refilled at the limit's rate."""

    tokens: float
    at: float


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    burst: int
    methods: frozenset[str]


def _strip(value: Any) -> Any:
    """Normalise for comparing a payload with its slack_sdk round trip."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def block_errors(blocks: Any) -> list[str]:
    """Slack's objections to a list of blocks; empty when Slack would accept it."""
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except ValueError:
            return ["blocks is not JSON"]
    if not isinstance(blocks, list):
        return ["blocks must be a list"]
    if len(blocks) > 50:
        return [f"{len(blocks)} blocks (at most 50 in a message)"]
    return _check_blocks(blocks)


def _check_blocks(blocks: list[Any]) -> list[str]:
    errors: list[str] = []
    ids: set[str] = set()
    for i, raw in enumerate(blocks):
        if not isinstance(raw, dict):
            errors.append(f"block {i} is not an object")
            continue
        try:
            parsed = Block.parse(dict(raw))
            if parsed is None or type(parsed) is Block:
                errors.append(f"block {i}: unknown type {raw.get('type')!r}")
                continue
            out = parsed.to_dict()  # validates, recursively
        except (SlackObjectFormationError, TypeError, KeyError, ValueError) as e:
            errors.append(f"block {i}: {e}")
            continue
        lost = set(_strip(raw)) - set(_strip(out))
        if lost:
            errors.append(f"block {i}: unknown fields {sorted(lost)}")
        block_id = raw.get("block_id")
        if block_id:
            if block_id in ids:
                errors.append(f"block {i}: duplicate block_id {block_id!r}")
            ids.add(block_id)
        elements = raw.get("elements") if raw.get("type") == "actions" else None
        if elements:
            action_ids = [e.get("action_id") for e in elements if e.get("action_id")]
            if len(action_ids) != len(set(action_ids)):
                errors.append(f"block {i}: duplicate action_id")
    return errors


def view_errors(view: Any) -> list[str]:
    if isinstance(view, str):
        try:
            view = json.loads(view)
        except ValueError:
            return ["view is not JSON"]
    if not isinstance(view, dict):
        return ["view must be an object"]
    limit = 100
    if len(view.get("blocks") or []) > limit:
        return [f"{len(view['blocks'])} blocks (at most {limit} in a view)"]
    try:
        View(**view).to_dict()
    except (SlackObjectFormationError, TypeError, KeyError, ValueError) as e:
        return [f"view: {e}"]
    if view.get("type") == "modal" and not view.get("title"):
        return ["a modal needs a title"]
    return _check_blocks(view.get("blocks") or [])


class FakeSlack:
    def __init__(self, token: str = "xoxb-test") -> None:
        self.token = token
        self.calls: list[Call] = []
        self.responses: list[tuple[str, dict[str, Any]]] = []  # posts to response_url
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, list[str]] = {}
        # What auth.test says of the bot token (set_workspace() for Enterprise Grid).
        self.workspace: dict[str, Any] = {"team_id": TEAM, "enterprise_id": None}
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.limit: RateLimit | None = None  # off unless rate_limit() is called
        self.connections = 0  # TCP connections accepted (HTTP/1.1 keeps them alive)
        self._buckets: dict[str, _Bucket] = {}
        # Socket Mode: a tests.fake_socket_mode.FakeSocketMode answers apps.connections.open.
        self.socket_mode: Any = None
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._server = FakeServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, key: str = "r") -> str:
        return f"http://127.0.0.1:{self.port}/response/{key}"

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- set-up and inspection -----------------------------------------------------------

    def set_workspace(self, team_id: str = TEAM, enterprise_id: str | None = None) -> None:
        """The bot token's workspace as auth.test tells it (an enterprise_id on Grid)."""
        self.workspace = {"team_id": team_id, "enterprise_id": enterprise_id}

    def add_user(
        self,
        user_id: str,
        email: str | None,
        name: str = "",
        *,
        team_id: str = TEAM,
        enterprise_id: str | None = None,
        guest: bool = False,
        single_channel_guest: bool = False,
        stranger: bool = False,
        bot: bool = False,
        app_user: bool = False,
        deleted: bool = False,
        **extra: Any,
    ) -> None:
        """A users.info answer: by default a full member of `TEAM` (the team auth.test names).

        `guest` / `single_channel_guest` set is_restricted / is_ultra_restricted (Slack sets
        is_restricted on single-channel guests too), `stranger` is_stranger (a Slack Connect
        user of another organisation), `enterprise_id` the Grid organisation (enterprise_user).
        """
        profile: dict[str, Any] = {"real_name": name or user_id}
        if email:
            profile["email"] = email
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": team_id,
            "name": (email or user_id).split("@")[0],
            "real_name": name or user_id,
            "deleted": deleted,
            "is_bot": bot,
            "is_app_user": app_user,
            "is_restricted": guest or single_channel_guest,
            "is_ultra_restricted": single_channel_guest,
            "profile": profile,
        }
        if stranger:
            user["is_stranger"] = True
        if enterprise_id:
            user["enterprise_user"] = {
                "id": user_id,
                "enterprise_id": enterprise_id,
                "enterprise_name": enterprise_id.lower(),
                "is_admin": False,
                "is_owner": False,
                "teams": [team_id],
            }
        self.users[user_id] = {**user, **extra}

    def fail(self, method: str, status: int, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP `status` (429 with Retry-After)."""
        with self._lock:
            self.faults.setdefault(method, []).append(Fault(status, times, retry_after))

    def hang(self, method: str, seconds: float, times: int = 1) -> None:
        """Hold the next `times` calls of `method` for `seconds` before answering 500."""
        with self._lock:
            self.faults.setdefault(method, []).append(Fault(0, times, hang_seconds=seconds))

    def rate_limit(
        self,
        per_channel_per_second: float | None = 1.0,
        burst: int = 1,
        methods: tuple[str, ...] = RATE_LIMITED_METHODS,
    ) -> None:
        """Throttle `methods` per channel as Slack does; None turns the limiter off again.

        Each channel has a bucket of `burst` calls that refills at `per_channel_per_second`;
        a call finding it empty gets 429 `ratelimited` with Retry-After: the whole seconds
        until the next call would be let through. A refused call takes nothing from it.
        """
        with self._lock:
            self._buckets.clear()
            if per_channel_per_second is None:
                self.limit = None
                return
            if per_channel_per_second <= 0 or burst < 1:
                raise ValueError("the rate must be positive and the burst at least 1")
            self.limit = RateLimit(per_channel_per_second, burst, frozenset(methods))

    def _throttled(self, method: str, args: dict[str, Any], now: float) -> int | None:
        """Retry-After seconds when this call exceeds its channel's rate, else None (lock held)."""
        limit = self.limit
        if limit is None or method not in limit.methods:
            return None
        channel = str(args.get("channel") or "")
        bucket = self._buckets.setdefault(channel, _Bucket(float(limit.burst), now))
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.at) * limit.per_second)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket.tokens) / limit.per_second))

    def calls_to(self, method: str, ok: bool | None = None) -> list[Call]:
        with self._lock:
            found = [c for c in self.calls if c.method == method]
        if ok is not None:
            found = [c for c in found if bool(c.response.get("ok")) == ok]
        return found

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.messages[(channel, ts)])

    def channel_messages(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m, ts=ts) for (ch, ts), m in self.messages.items() if ch == channel]

    # ---- the wire ------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake.connections += 1

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                args: dict[str, Any] = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                ctype = self.headers.get("Content-Type") or ""
                if raw and "json" in ctype:
                    args.update(json.loads(raw))
                elif raw:
                    args.update({k: v[0] for k, v in parse_qs(raw.decode()).items()})
                if parsed.path.startswith("/response/"):
                    with fake._lock:
                        fake.responses.append((parsed.path.rsplit("/", 1)[1], args))
                    self._send(200, {"ok": True})
                    return
                method = parsed.path.removeprefix("/api/")
                status, body, headers = fake._answer(method, args, self.headers.get("Authorization") or "")
                self._send(status, body, headers)

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _answer(
        self, method: str, args: dict[str, Any], auth: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        call = Call(method=method, args=args, at=time.monotonic())
        with self._lock:
            self.calls.append(call)
            fault = None
            queue = self.faults.get(method) or []
            if queue:
                fault = queue[0]
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
        if fault is not None:
            if fault.status == 0:
                time.sleep(fault.hang_seconds)
                call.status = 500
                return 500, {"ok": False, "error": "fatal_error"}, {}
            call.status = fault.status
            if fault.status == 429:
                call.response = {"ok": False, "error": "ratelimited"}
                return 429, call.response, {"Retry-After": str(fault.retry_after)}
            call.response = {"ok": False, "error": "internal_error"}
            return fault.status, call.response, {}
        if method == "apps.connections.open" and self.socket_mode is not None:
            # Called with the app-level (xapp-) token, not the bot token.
            call.response = self.socket_mode.connections_open(auth)
            return 200, call.response, {}
        if auth != f"Bearer {self.token}":
            call.response = {"ok": False, "error": "not_authed" if not auth else "invalid_auth"}
            return 200, call.response, {}
        with self._lock:
            retry_after = self._throttled(method, args, time.monotonic())
            if retry_after is not None:
                call.status = 429
                call.response = {"ok": False, "error": "ratelimited"}
                return 429, call.response, {"Retry-After": str(retry_after)}
            call.response = self._method(method, args)
        return 200, call.response, {}

    def _method(self, method: str, a: dict[str, Any]) -> dict[str, Any]:
        def error(code: str, **more: Any) -> dict[str, Any]:
            return {"ok": False, "error": code, **more}

        if "blocks" in a and a["blocks"] is not None:
            problems = block_errors(a["blocks"])
            if problems:
                return error("invalid_blocks", errors=problems)
            if isinstance(a["blocks"], str):
                a["blocks"] = json.loads(a["blocks"])
        if "view" in a:
            if isinstance(a["view"], str):
                a["view"] = json.loads(a["view"])
            problems = view_errors(a["view"])
            if problems:
                return error("invalid_arguments", response_metadata={"messages": problems})

        if method == "auth.test":
            org = self.workspace["enterprise_id"]
            return {
                "ok": True, "url": "https://rolecall.slack.com/", "team": "rolecall", "user": "rolecall",
                "team_id": self.workspace["team_id"], "user_id": BOT_USER, "bot_id": "BBOT",
                "is_enterprise_install": False, **({"enterprise_id": org} if org else {}),
            }  # fmt: skip
        if method in ("users.info",):
            user = self.users.get(a.get("user", ""))
            return {"ok": True, "user": user} if user else error("user_not_found")
        if method == "users.lookupByEmail":
            for user in self.users.values():
                if (user["profile"].get("email") or "").lower() == str(a.get("email", "")).lower():
                    return {"ok": True, "user": user}
            return error("users_not_found")
        if method == "usergroups.users.list":
            group = a.get("usergroup", "")
            if group not in self.groups:
                return error("no_such_subteam")
            return {"ok": True, "users": list(self.groups[group])}
        if method == "conversations.open":
            users = str(a.get("users") or "")
            if not users or any(u not in self.users for u in users.split(",")):
                return error("user_not_found")
            return {"ok": True, "channel": {"id": "D" + users.replace(",", "")}}
        if method == "chat.postMessage":
            channel = str(a.get("channel") or "")
            if not channel:
                return error("channel_not_found")
            if channel.startswith("U"):
                channel = "D" + channel
            if not a.get("text") and not a.get("blocks"):
                return error("no_text")
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            self.messages[(channel, ts)] = {"text": a.get("text"), "blocks": a.get("blocks") or []}
            return {"ok": True, "channel": channel, "ts": ts, "message": {"text": a.get("text"), "ts": ts}}
        if method == "chat.update":
            key = (str(a.get("channel")), str(a.get("ts")))
            if key not in self.messages:
                return error("message_not_found")
            self.messages[key] = {"text": a.get("text"), "blocks": a.get("blocks") or []}
            return {"ok": True, "channel": key[0], "ts": key[1]}
        if method == "chat.postEphemeral":
            if not a.get("channel") or not a.get("user"):
                return error("channel_not_found")
            return {"ok": True, "message_ts": f"{int(time.time())}.{next(self._ts):06d}"}
        if method == "views.open":
            if not a.get("trigger_id"):
                return error("invalid_trigger_id")
            return {"ok": True, "view": self._store_view(a["view"])}
        if method == "views.update":
            view_id = str(a.get("view_id") or "")
            if view_id not in self.views:
                return error("not_found")
            if a.get("hash") and a["hash"] != self.views[view_id]["hash"]:
                return error("hash_conflict")
            return {"ok": True, "view": self._store_view(a["view"], view_id)}
        if method == "views.publish":
            if not a.get("user_id"):
                return error("invalid_arguments")
            return {"ok": True, "view": self._store_view(a["view"], "home-" + str(a["user_id"]))}
        return error("unknown_method")

    def _store_view(self, view: dict[str, Any], view_id: str | None = None) -> dict[str, Any]:
        view_id = view_id or f"V{next(self._ts):08d}"
        stored = {**view, "id": view_id, "hash": f"h{next(self._ts)}", "state": {"values": {}}}
        self.views[view_id] = stored
        return stored


# ---- driving the Bolt app as Slack does --------------------------------------------------

SECRET = "test-signing-secret"
APPROVERS_CHANNEL = "CAPPROVERS"


@dataclass
class Reply:
    status: int
    text: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.text) if self.text else None


class SlackDriver:
    """Sends signed requests to the Bolt app exactly as Slack does (form or `payload=`)."""

    def __init__(
        self,
        url: str,
        fake: FakeSlack,
        secret: str = SECRET,
        *,
        team: str = TEAM,
        enterprise: str | None = None,
    ) -> None:
        """`team` / `enterprise`: the workspace (and Grid organisation) payloads say they are from."""
        from slack_sdk.signature import SignatureVerifier

        self.url = url
        self.fake = fake
        self.verifier = SignatureVerifier(secret)
        self.team = team
        self.enterprise = enterprise
        self._n = itertools.count(1)

    async def post(
        self,
        body: str,
        content_type: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> Reply:
        import aiohttp

        ts = str(timestamp if timestamp is not None else int(time.time()))
        sig = signature
        if sig is None:
            sig = str(self.verifier.generate_signature(timestamp=ts, body=body))
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig,
        }
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, data=body.encode(), headers=headers) as resp,
        ):
            text = await resp.text()
            return Reply(resp.status, text, time.monotonic() - started)

    def command_body(self, user: str, text: str, command: str = "/p0", channel: str = "CGENERAL") -> str:
        from urllib.parse import urlencode

        return urlencode(self.command_payload(user, text, command, channel))

    def command_payload(
        self, user: str, text: str, command: str = "/p0", channel: str = "CGENERAL"
    ) -> dict[str, str]:
        """A slash command's fields (form-encoded over HTTP, a JSON object in Socket Mode)."""
        n = next(self._n)
        grid = {"enterprise_id": self.enterprise, "enterprise_name": "org"} if self.enterprise else {}
        return {
            "token": "legacy-verification-token",
            "team_id": self.team,
            "team_domain": "rolecall",
            **grid,
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "AROLECALL",
            "response_url": self.fake.response_url(f"cmd{n}"),
            "trigger_id": f"trigger.{n}",
        }

    async def command(self, user: str, text: str, **kw: Any) -> Reply:
        return await self.post(self.command_body(user, text, **kw), "application/x-www-form-urlencoded")

    async def interaction(self, payload: dict[str, Any], **kw: Any) -> Reply:
        from urllib.parse import urlencode

        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, "application/x-www-form-urlencoded", **kw)

    def _base(self, type_: str, user: str) -> dict[str, Any]:
        n = next(self._n)
        team: dict[str, Any] = {"id": self.team, "domain": "rolecall"}
        if self.enterprise:
            team["enterprise_id"] = self.enterprise
        return {
            "type": type_,
            "team": team,
            "enterprise": {"id": self.enterprise, "name": "org"} if self.enterprise else None,
            "is_enterprise_install": False,
            "user": {"id": user, "username": user.lower(), "team_id": self.team},
            "api_app_id": "AROLECALL",
            "token": "legacy-verification-token",
            "trigger_id": f"trigger.{n}",
        }

    async def click(
        self,
        user: str,
        action_id: str,
        value: str,
        *,
        channel: str | None = None,
        ts: str | None = None,
        home: bool = False,
    ) -> Reply:
        """A button click on a message (channel, ts) or on the App Home."""
        payload = self._base("block_actions", user)
        action = {"action_id": action_id, "block_id": "b", "type": "button", "value": value, "action_ts": "1"}
        payload["actions"] = [action]
        if home:
            payload["container"] = {"type": "view", "view_id": f"home-{user}"}
            payload["view"] = {"id": f"home-{user}", "type": "home", "blocks": [], "state": {"values": {}}}
        else:
            assert channel is not None and ts is not None
            payload["container"] = {"type": "message", "message_ts": ts, "channel_id": channel}
            payload["channel"] = {"id": channel, "name": "x"}
            payload["message"] = {"ts": ts, "text": "", **self.fake.message(channel, ts)}
            payload["response_url"] = self.fake.response_url(f"click{next(self._n)}")
        return await self.interaction(payload)

    async def select_in_view(
        self, user: str, view: dict[str, Any], block: str, action_id: str, value: str
    ) -> Reply:
        payload = self._base("block_actions", user)
        values = {block: {action_id: {"type": "static_select", "selected_option": _opt(value)}}}
        payload["container"] = {"type": "view", "view_id": view["id"]}
        payload["view"] = {**view, "state": {"values": values}}
        payload["actions"] = [
            {"action_id": action_id, "block_id": block, "type": "static_select",
             "selected_option": _opt(value), "action_ts": "1"}
        ]  # fmt: skip
        return await self.interaction(payload)

    async def suggest(self, user: str, view: dict[str, Any], block: str, action_id: str, typed: str) -> Reply:
        """What Slack sends as someone types into an external_select (`block_suggestion`)."""
        payload = self._base("block_suggestion", user)
        payload.update(action_id=action_id, block_id=block, value=typed)
        payload["container"] = {"type": "view", "view_id": view.get("id", "V1")}
        payload["view"] = {**view, "state": {"values": {}}}
        return await self.interaction(payload)

    async def submit(self, user: str, view: dict[str, Any], values: dict[str, dict[str, Any]]) -> Reply:
        """Submit a modal; `values` maps block_id -> {action_id: str (select/text), or the
        list of ticked values (checkboxes)}."""
        state: dict[str, Any] = {}
        for block, actions in values.items():
            state[block] = {}
            for action_id, value in actions.items():
                element = _element(view, block)
                if element.get("type") in ("static_select", "external_select"):
                    state[block][action_id] = {"type": element["type"], "selected_option": _opt(value)}
                elif element.get("type") == "checkboxes":
                    ticked = [o for o in element["options"] if o["value"] in value]
                    state[block][action_id] = {"type": "checkboxes", "selected_options": ticked}
                else:
                    state[block][action_id] = {"type": "plain_text_input", "value": value}
        payload = self._base("view_submission", user)
        payload["view"] = {**view, "state": {"values": state}}
        return await self.interaction(payload)

    async def event(self, event: dict[str, Any], **kw: Any) -> Reply:
        body = {
            "token": "legacy-verification-token",
            "team_id": self.team,
            **({"enterprise_id": self.enterprise} if self.enterprise else {}),
            "api_app_id": "AROLECALL",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._n)}",
            "event_time": int(time.time()),
        }
        return await self.post(json.dumps(body), "application/json", **kw)


def _opt(value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": value}, "value": value}


def _element(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    for block in view.get("blocks") or []:
        if block.get("block_id") == block_id:
            return dict(block.get("element") or {})
    return {}


# ---- the whole product: fake Slack + Bolt app over HTTP + worker + Temporal + PostgreSQL --


@dataclass
class World:
    fake: FakeSlack
    slack: SlackDriver
    stack: Any  # tests.conftest.Stack
    login: str
    role: str

    @property
    def email(self) -> str:
        return f"{self.login}@example.com"

    def rid(self, role: str | None = None) -> str:
        return f"access/pg/{role or self.role}/{self.email}"

    def posts(self, channel: str) -> list[dict[str, Any]]:
        """Messages currently in a channel (as last updated), oldest first."""
        return sorted(self.fake.channel_messages(channel), key=lambda m: m["ts"])

    def ephemerals(self, user: str) -> list[str]:
        return [
            str(c.args.get("text"))
            for c in self.fake.calls_to("chat.postEphemeral")
            if c.args.get("user") == user
        ]

    async def view(self, method: str = "views.open", count: int = 1, timeout: float = 10) -> dict[str, Any]:
        """The view of the `count`-th successful call of `method`, waiting for it."""
        deadline = time.monotonic() + timeout
        while len(self.fake.calls_to(method, ok=True)) < count:
            if time.monotonic() > deadline:
                bad = [c.response for c in self.fake.calls_to(method)]
                raise AssertionError(f"no successful {method} #{count} within {timeout}s ({bad})")
            await asyncio.sleep(0.05)
        return dict(self.fake.calls_to(method, ok=True)[count - 1].response["view"])


ALICE, DBA, BOB = "UALICE", "UDBA", "UBOB"


def action_ids(message: dict[str, Any]) -> list[str]:
    ids = []
    for block in message.get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("action_id"):
                ids.append(element["action_id"])
        if (block.get("accessory") or {}).get("action_id"):
            ids.append(block["accessory"]["action_id"])
    return ids


def text_of(message: dict[str, Any]) -> str:
    return json.dumps(message.get("blocks") or []) + str(message.get("text") or "")


def web_client_for(fake: FakeSlack, rate_limit_retries: int = 0) -> Any:
    """A client on the fake, retrying 429s as the worker's does (from Temporal; the app: 3)."""
    from activities.slack import web_client

    return web_client(fake.token, base_url=fake.url, timeout=5, rate_limit_retries=rate_limit_retries)


def world_context(
    make_stack: Any,
    roles: Any,
    *,
    approvers: list[str] | None = None,
    requester_approves: bool = False,
    signed: bool = True,
    slack_temporal: Any = None,
    **extra: Any,
) -> Any:
    """An async context manager yielding a `World`; the fake Slack is already running.

    `signed`: the Slack app has the tests' ROLECALL_DECISION_KEY (as the tests' workers do).
    `slack_temporal`: the Temporal client the Slack app uses (default: the stack's).
    """
    import contextlib

    @contextlib.asynccontextmanager
    async def world() -> Any:
        from aiohttp import web

        from rolecall.config import ConfigStore, Settings
        from rolecall.slack_client import kept_alive
        from slack_app import build_app
        from tests.conftest import DECISION_KEY

        role, login = roles.role(), roles.login()
        fake = FakeSlack().start()
        sessions = contextlib.AsyncExitStack()  # the clients' HTTP sessions, as in the processes
        try:
            fake.add_user(ALICE, f"{login}@example.com", "Alice Example")
            fake.add_user(DBA, "DBA@example.com", "Dana DBA")
            fake.add_user(BOB, "bob@example.com", "Bob Bystander")
            extra.setdefault("slack_channel", APPROVERS_CHANNEL)
            stack = await make_stack(
                [role, *extra.pop("more_roles", [])],
                [
                    *(approvers or ["dba@example.com"]),
                    *([f"{login}@example.com"] if requester_approves else []),
                ],
                slack_client=await sessions.enter_async_context(kept_alive(web_client_for(fake))),
                **extra,
            )
            key = DECISION_KEY.decode() if signed else None
            app = build_app(
                ConfigStore(stack.config_path),
                slack_temporal or stack.client,
                Settings(task_queue=stack.task_queue, decision_key=key),
                web_client=await sessions.enter_async_context(
                    kept_alive(web_client_for(fake, rate_limit_retries=3))
                ),
                signing_secret=SECRET,
            )
            runner = web.AppRunner(app.web_app(path="/slack/events"))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                driver = SlackDriver(f"http://127.0.0.1:{port}/slack/events", fake)
                yield World(fake=fake, slack=driver, stack=stack, login=login, role=role)
            finally:
                await runner.cleanup()
        finally:
            await sessions.aclose()
            fake.stop()

    return world()
