"""Structured logs: a `rolecall worker` whose stderr is not a terminal writes JSON lines, and
every line logged inside a request's workflow or activities carries its request id."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from rolecall.config import Settings
from rolecall.logs import JsonFormatter, RequestIdFilter, TextFormatter, setup_logging, use_json
from rolecall.models import Decision, RequestState
from rolecall.operations import handle
from tests.conftest import Roles, eventually
from tests.worker_process import start_worker


async def test_worker_logs_are_json_with_request_id(make_stack, roles: Roles, tmp_path: Path) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)
    worker = start_worker(stack, tmp_path)
    try:
        await worker.ready()
        rid = await stack.request(login, role, "1h")
        # A self-approval sent straight to the workflow (the CLI would refuse it first):
        # the workflow logs the refusal through workflow.logger.
        await handle(stack.client, rid).signal("approve", Decision(actor=f"{login}@example.com"))
        await stack.cli("approve", rid, "--as", "dba@example.com")
        await stack.wait_state(rid, RequestState.GRANTED)
        await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
        await stack.wait_state(rid, RequestState.RELINQUISHED)

        def logged() -> bool:
            return any(r.get("request_id") == rid and "revoked" in r["message"] for r in worker.records())

        await eventually(logged, timeout=10, what="the revoke's log line")
    finally:
        worker.stop()

    records = worker.records()  # every line parses as JSON, or this fails
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    ready = [r for r in records if "ready" in r["message"]]
    assert ready and ready[0]["logger"] == "rolecall.worker"

    about = [r for r in records if rid in json.dumps(r)]
    assert about, "no line mentions the request"
    for r in about:
        assert r.get("request_id") == rid, r
    kinds = {r.get("activity") for r in about}
    assert {"grant_role", "revoke_role"} <= kinds, kinds
    refused = [r for r in about if r["message"].startswith("refused approve")]
    assert refused and refused[0]["level"] == "warning"
    assert refused[0]["request_id"] == rid
    # the request id is a field, not repeated as a dict at the end of the message
    assert all("{'" not in r["message"] for r in about)


def test_format_choice(monkeypatch) -> None:
    tty, pipe = io.StringIO(), io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    assert use_json("auto", pipe) and not use_json("auto", tty)
    assert use_json("json", tty) and not use_json("text", pipe)
    assert use_json("JSON", tty)
    monkeypatch.setenv("ROLECALL_LOG_FORMAT", "text")
    assert Settings().log_format == "text"


def test_formatters_carry_request_id_from_temporal_extras() -> None:
    record = logging.LogRecord("temporalio.activity", logging.INFO, __file__, 1, "granted %s", ("x",), None)
    record.temporal_activity = {"workflow_id": "access/pg/ro/a@b", "activity_type": "grant_role"}
    assert RequestIdFilter().filter(record)
    out = json.loads(JsonFormatter().format(record))
    assert out["request_id"] == "access/pg/ro/a@b"
    assert out["activity"] == "grant_role" and out["message"] == "granted x"
    assert "temporal_activity" not in out
    assert TextFormatter().format(record).endswith("granted x [access/pg/ro/a@b]")


def test_setup_logging_leaves_a_configured_root_alone() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    stream = io.StringIO()
    setup_logging(Settings(log_format="json"), stream)
    if before:  # under pytest, its capture handlers are already there: like basicConfig
        assert root.handlers == before
        return
    try:  # pragma: no cover - only without pytest's logging plugin
        logging.getLogger("x").info("hello")
        assert json.loads(stream.getvalue())["message"] == "hello"
    finally:
        for h in list(root.handlers):
            if getattr(h, "_rolecall", False):
                root.removeHandler(h)
