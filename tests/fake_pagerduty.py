"""A local HTTP server speaking the PagerDuty REST API v2 wire format, for the parts rolecall uses.

`GET /users` (`query`, classic pagination: `limit`, `offset`, `more`, `total`) and `GET /oncalls`
(`user_ids[]`, `schedule_ids[]`, `escalation_policy_ids[]`, `earliest`, `since`/`until`, same
pagination). Every request must carry `Authorization: Token token=<token>` (else 401, as
PagerDuty answers). Every request is recorded; `fail_with(500)`, `fail_with(429)` and `hang()`
make it misbehave on demand. Real pdpyras talks to it through `APISession.url`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_http import FakeServer

# PagerDuty's own ceiling for classic pagination.
MAX_LIMIT = 100
DEFAULT_LIMIT = 25


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0

    def one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class OnCall:
    user_id: str
    escalation_policy: tuple[str, str]
    level: int = 1
    schedule: tuple[str, str] | None = None
    start: datetime | None = None  # None: always on call (no schedule)
    end: datetime | None = None


TOKEN_ENV = "ROLECALL_TEST_PAGERDUTY_TOKEN"
# The escalation policy `add_oncall` puts people on by default, and `section()` counts.
DEFAULT_POLICY = ("PEPDB01", "Databases")


@dataclass
class FakePagerDuty:
    token: str = field(default_factory=lambda: f"pd-{uuid.uuid4().hex}")
    token_env: str = TOKEN_ENV  # set to `token` while the fake runs
    page_limit: int = MAX_LIMIT
    users: list[dict[str, Any]] = field(default_factory=list)
    oncalls: list[OnCall] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    fault: int | str | None = None  # an HTTP status to answer, "hang", or None
    delay: float = 0.0  # seconds before every answer
    fault_path: str | None = None  # only this path misbehaves (None: all)
    _server: FakeServer | None = None
    _thread: threading.Thread | None = None
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- set-up ------------------------------------------------------------------------

    def add_user(self, email: str, name: str | None = None) -> str:
        user_id = "P" + uuid.uuid4().hex[:6].upper()
        self.users.append(
            {
                "id": user_id,
                "type": "user",
                "summary": name or email,
                "name": name or email,
                "email": email,
                "self": f"{self.url}/users/{user_id}",
                "html_url": f"https://example.pagerduty.com/users/{user_id}",
                "time_zone": "Etc/UTC",
                "role": "user",
            }
        )
        return user_id

    def add_oncall(
        self,
        user_id: str,
        escalation_policy: tuple[str, str] = DEFAULT_POLICY,
        level: int = 1,
        schedule: tuple[str, str] | None = ("PSCDB01", "DB primary"),
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> None:
        self.oncalls.append(OnCall(user_id, escalation_policy, level, schedule, start, end))

    def fail_with(self, status: int, path: str | None = None) -> None:
        self.fault, self.fault_path = status, path

    def hang(self, path: str | None = None) -> None:
        self.fault, self.fault_path = "hang", path

    def slow(self, seconds: float) -> None:
        """Answer every request correctly, but only after this long (a slow PagerDuty)."""
        self.delay = seconds

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def last(self, path: str) -> Recorded:
        with self._lock:
            return [r for r in self.requests if r.path == path][-1]

    # ---- server ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            return "http://127.0.0.1:0"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakePagerDuty:
        fake = self

        class Handler(_Handler):
            pagerduty = fake

        self._server = FakeServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-pagerduty", daemon=True)
        self._thread.start()
        os.environ[self.token_env] = self.token
        return self

    def section(self, **settings: Any) -> dict[str, dict[str, Any]]:
        """A `[pagerduty]` config table that points rolecall at this fake.

        The default policy's duties count, as a real deployment must name some; pass
        `any_duty=True` (and no IDs) for a test that is really about any duty.
        """
        duties = {} if settings.get("any_duty") else {"escalation_policy_ids": [DEFAULT_POLICY[0]]}
        return {
            "pagerduty": {
                "enabled": True,
                "token_env": self.token_env,
                "url": self.url,
                "timeout": 2,
                **duties,
                **settings,
            }
        }

    def stop(self) -> None:
        os.environ.pop(self.token_env, None)
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakePagerDuty:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- the API -----------------------------------------------------------------------

    def _ref(self, kind: str, ident: str, summary: str) -> dict[str, Any]:
        plural = "escalation_policies" if kind == "escalation_policy" else f"{kind}s"
        return {
            "id": ident,
            "type": f"{kind}_reference",
            "summary": summary,
            "self": f"{self.url}/{plural}/{ident}",
            "html_url": f"https://example.pagerduty.com/{plural}/{ident}",
        }

    def list_users(self, q: dict[str, list[str]]) -> list[dict[str, Any]]:
        # PagerDuty matches the query against names and emails, loosely (not exactly).
        needle = (_first(q, "query") or "").lower()
        return [u for u in self.users if needle in u["email"].lower() or needle in u["name"].lower()]

    def list_oncalls(self, q: dict[str, list[str]]) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        since = _time(_first(q, "since")) or now
        until = _time(_first(q, "until")) or now
        users, schedules = q.get("user_ids[]"), q.get("schedule_ids[]")
        policies = q.get("escalation_policy_ids[]")
        found = []
        for oc in self.oncalls:
            if users and oc.user_id not in users:
                continue
            if schedules and (oc.schedule is None or oc.schedule[0] not in schedules):
                continue
            if policies and oc.escalation_policy[0] not in policies:
                continue
            if (oc.start is not None and oc.start > until) or (oc.end is not None and oc.end <= since):
                continue
            found.append(oc)
        if _first(q, "earliest") == "true":
            earliest: dict[tuple[str, int, str], OnCall] = {}
            for oc in sorted(found, key=lambda o: o.start or datetime.min.replace(tzinfo=UTC)):
                earliest.setdefault((oc.escalation_policy[0], oc.level, oc.user_id), oc)
            found = list(earliest.values())
        names = {u["id"]: u["summary"] for u in self.users}
        return [
            {
                "escalation_policy": self._ref("escalation_policy", *oc.escalation_policy),
                "escalation_level": oc.level,
                "schedule": self._ref("schedule", *oc.schedule) if oc.schedule else None,
                "user": self._ref("user", oc.user_id, names.get(oc.user_id, oc.user_id)),
                "start": oc.start.isoformat() if oc.start else None,
                "end": oc.end.isoformat() if oc.end else None,
            }
            for oc in found
        ]


def _first(q: dict[str, list[str]], name: str) -> str | None:
    values = q.get(name)
    return values[0] if values else None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


class _Handler(BaseHTTPRequestHandler):
    pagerduty: FakePagerDuty
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        pd = self.pagerduty
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        record = Recorded("GET", parts.path, query, {k: v for k, v in self.headers.items()})
        with pd._lock:
            pd.requests.append(record)
        if pd.delay:
            time.sleep(pd.delay)

        if pd.fault is not None and pd.fault_path in (None, parts.path):
            if pd.fault == "hang":
                pd._release.wait(timeout=60)
                return
            assert isinstance(pd.fault, int)
            record.status = pd.fault
            self._error(pd.fault, 2001 if pd.fault < 500 else 0, "fault injected by the test")
            return
        if self.headers.get("Authorization") != f"Token token={pd.token}":
            record.status = 401
            self._error(401, 2006, "Authentication failed")
            return

        collections = {"/users": ("users", pd.list_users), "/oncalls": ("oncalls", pd.list_oncalls)}
        if parts.path not in collections:
            record.status = 404
            self._error(404, 2100, "Not Found")
            return
        wrapper, lister = collections[parts.path]
        try:
            limit = min(int(_first(query, "limit") or DEFAULT_LIMIT), MAX_LIMIT, pd.page_limit)
            offset = int(_first(query, "offset") or 0)
        except ValueError:
            record.status = 400
            self._error(400, 2001, "Invalid Input Provided")
            return
        items = lister(query)
        page = items[offset : offset + limit]
        with_total = _first(query, "total") in ("true", "1")
        record.status = 200
        self._send(
            200,
            {
                wrapper: page,
                "limit": limit,
                "offset": offset,
                "more": offset + len(page) < len(items),
                "total": len(items) if with_total else None,
            },
        )

    def _error(self, status: int, code: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "code": code}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
