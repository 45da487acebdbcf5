"""A local Slack Web API: a real HTTP server (in a thread) that answers like Slack.

It records every call, keeps the messages and views it was given (so `chat.update` of an
unknown message fails like Slack's `message_not_found`), validates every `blocks` and
`view` payload with slack_sdk's models, and can be told to answer 429 + Retry-After, 500,
or to hang, for chosen methods. Point a client at it with `base_url=fake.url`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

TEAM = "T0ROLECALL"
BOT_USER = "UBOT"


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
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
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

    def add_user(self, user_id: str, email: str | None, name: str = "", **extra: Any) -> None:
        profile: dict[str, Any] = {"real_name": name or user_id}
        if email:
            profile["email"] = email
        self.users[user_id] = {
            "id": user_id,
            "team_id": TEAM,
            "name": (email or user_id).split("@")[0],
            "real_name": name or user_id,
            "deleted": False,
            "is_bot": False,
            "profile": profile,
            **extra,
        }

    def fail(self, method: str, status: int, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP `status` (429 with Retry-After)."""
        with self._lock:
            self.faults.setdefault(method, []).append(Fault(status, times, retry_after))

    def hang(self, method: str, seconds: float, times: int = 1) -> None:
        """Hold the next `times` calls of `method` for `seconds` before answering 500."""
        with self._lock:
            self.faults.setdefault(method, []).append(Fault(0, times, hang_seconds=seconds))

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

    def _answer(self, method: str, args: dict[str, Any], auth: str) -> tuple[int, dict[str, Any], dict[str, str]]:
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
        if auth != f"Bearer {self.token}":
            call.response = {"ok": False, "error": "not_authed" if not auth else "invalid_auth"}
            return 200, call.response, {}
        with self._lock:
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
            return {"ok": True, "url": "https://rolecall.slack.com/", "team": "rolecall", "user": "rolecall",
                    "team_id": TEAM, "user_id": BOT_USER, "bot_id": "BBOT"}  # fmt: skip
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
