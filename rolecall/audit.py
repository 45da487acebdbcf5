"""`rolecall audit`: every request started in a time window, as evidence for an auditor.

Read from Temporal only (no database access needed): the visibility store finds the
requests (`WorkflowType` and `StartTime`), and each request's own record says what happened:
the workflow's result when it completed, its `status` query while it runs, and its history
(the request as submitted, the signals received) when neither can answer, e.g. a workflow
terminated by an operator or one whose worker is down.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, TextIO

from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHistoryEventFilterType,
)

from rolecall import contract
from rolecall.durations import format_duration
from rolecall.errors import BadRequest
from rolecall.models import AccessRequest, Decision, RequestState, RequestStatus
from rolecall.temporal import DATA_CONVERTER, STATE

Format = Literal["csv", "jsonl"]

COLUMNS = [
    "id",
    "requested_at",
    "requester",
    "instance",
    "role",
    "db_user",
    "reason",
    "requested_duration",
    "duration",
    "state",
    "decision",
    "decided_by",
    "decided_at",
    "decided_via",
    "decision_reason",
    "rule",
    "approvals",
    "break_glass",
    "reviewed_by",
    "reviewed_at",
    "auto_approved",
    "granted_at",
    "expires_at",
    "revoked_at",
    "error",
    "refused",
    "warnings",
    "source",
    "workflow_status",
    "closed_at",
    "note",
]

_QUERY_TIMEOUT = timedelta(seconds=5)
_PARALLEL = 16


def parse_window(since: str, until: str | None = None) -> tuple[datetime, datetime]:
    """`2026-01-01` or an ISO time; a time without zone is UTC; until defaults to now."""
    start = _parse_time(since, "--since")
    end = _parse_time(until, "--until") if until else datetime.now(UTC)
    if end <= start:
        raise BadRequest(f"--until ({end.isoformat()}) must be after --since ({start.isoformat()})")
    return start, end


def _parse_time(text: str, what: str) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{what}: {text!r} is not a date (2026-01-01) or ISO time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def window_query(since: datetime, until: datetime) -> str:
    return (
        f'WorkflowType = "{contract.ACCESS_REQUEST}" AND StartTime >= "{_rfc3339(since)}" '
        f'AND StartTime < "{_rfc3339(until)}"'
    )


async def records(client: Client, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """One record per request started in [since, until), oldest first.

    A request whose grant continued in a fresh run (rolecall.models.HeldGrant) is found by
    its first run, which started when it was asked, and told from its last run.
    """
    executions = [
        wf async for wf in client.list_workflows(window_query(since, until)) if not _continuation(wf)
    ]
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(wf: WorkflowExecution) -> dict[str, Any]:
        async with gate:
            if wf.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                wf = await _last_run(client, wf)
            return await record(client, wf)

    rows = await asyncio.gather(*(one(wf) for wf in executions))
    return sorted(rows, key=lambda r: (r["requested_at"] or "", r["id"]))


def _continuation(wf: WorkflowExecution) -> bool:
    """A run a request continued into carries when it was asked in its memo (visibility does
    not fill in first_run_id)."""
    return contract.REQUESTED_AT in wf.raw_info.memo.fields


async def _last_run(client: Client, first: WorkflowExecution) -> WorkflowExecution:
    """The run a request continued into, named by its first run's closing event (the same ID
    may hold later requests, so the chain is followed, not the ID)."""
    h = client.get_workflow_handle(first.id, run_id=first.run_id)
    async for event in h.fetch_history_events(event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT):
        if event.HasField("workflow_execution_continued_as_new_event_attributes"):
            run_id = event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            return await client.get_workflow_handle(first.id, run_id=run_id).describe()
    return first


async def record(client: Client, wf: WorkflowExecution) -> dict[str, Any]:
    """What happened to one request, from its result, its status query, or its history."""
    h = client.get_workflow_handle(wf.id, run_id=wf.run_id, result_type=RequestStatus)
    status: RequestStatus | None = None
    note = ""
    if wf.status == WorkflowExecutionStatus.COMPLETED:
        status = await h.result()
    elif wf.status == WorkflowExecutionStatus.RUNNING:
        try:
            status = await h.query(contract.STATUS, result_type=RequestStatus, rpc_timeout=_QUERY_TIMEOUT)
        except Exception as e:  # no worker polling, or it is slow: the history still answers
            note = f"status query failed ({type(e).__name__}); from history"
    else:
        note = f"workflow {wf.status.name.lower() if wf.status else 'closed'}; from history"
    row = _from_status(status) if status else await _from_history(client, wf)
    row["workflow_status"] = wf.status.name.lower() if wf.status else ""
    row["closed_at"] = _iso(wf.close_time)
    signals = row.pop("signals", [])
    if signals:  # received, but whether they were accepted only the workflow could say
        note += "; signals received: " + "; ".join(signals)
    row["note"] = note
    return row


def _decision(s: RequestStatus) -> str:
    if s.decided_at is None:
        return ""
    if s.auto_approved:
        return "auto-approved"
    if s.state == RequestState.DENIED:
        return "denied"
    if s.state == RequestState.CANCELLED:
        return "cancelled"
    return "approved"


def _from_status(s: RequestStatus) -> dict[str, Any]:
    return {
        "id": s.id,
        "requested_at": _iso(s.requested_at),
        "requester": s.requester,
        "instance": s.instance,
        "role": s.role,
        "db_user": s.db_user or "",
        "reason": s.reason,
        "requested_duration": format_duration(s.requested_duration),
        "duration": format_duration(s.duration) if s.duration else "",
        "state": s.state.value,
        "decision": _decision(s),
        "decided_by": s.decided_by or "",
        "decided_at": _iso(s.decided_at),
        "decided_via": s.decided_via or ("pagerduty" if s.auto_approved else ""),
        "rule": s.rule,
        "approvals": [{"by": a.by, "at": _iso(a.at), "via": a.via} for a in s.approvals],
        "break_glass": s.break_glass,
        "reviewed_by": s.reviewed_by or "",
        "reviewed_at": _iso(s.reviewed_at),
        "decision_reason": s.decision_reason or (s.on_call_detail if s.auto_approved else ""),
        "auto_approved": s.auto_approved,
        "granted_at": _iso(s.granted_at),
        "expires_at": _iso(s.expires_at),
        "revoked_at": _iso(s.revoked_at),
        "error": s.error or "",
        "refused": [
            {"signal": r.signal, "actor": r.actor, "at": _iso(r.at), "why": r.why, "via": r.via}
            for r in s.refused
        ],
        "warnings": list(s.warnings),
        "source": s.source,
    }


async def _from_history(client: Client, wf: WorkflowExecution) -> dict[str, Any]:
    """The request as submitted and the signals received; the state from visibility."""
    converter = DATA_CONVERTER.payload_converter
    req: AccessRequest | None = None
    signals: list[str] = []
    async for event in client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            req = converter.from_payloads(payloads, [AccessRequest])[0]
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs = event.workflow_execution_signaled_event_attributes
            d = converter.from_payloads(attrs.input.payloads, [Decision])[0] if attrs.input.payloads else None
            at = _iso(event.event_time.ToDatetime(tzinfo=UTC))
            origin = f" ({d.via}, signed)" if d and d.signature else (f" ({d.via})" if d else "")
            signals.append(f"{attrs.signal_name} by {d.actor if d else '?'} at {at}{origin}")
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row.update(
        id=wf.id,
        requested_at=_iso(wf.start_time),
        state=wf.typed_search_attributes.get(STATE) or "",
        auto_approved="",
        refused=[],
        warnings=[],
        signals=signals,
    )
    if req is not None:
        row.update(
            requester=req.requester.lower(),
            instance=req.instance,
            role=req.role,
            reason=req.reason,
            requested_duration=format_duration(req.duration),
            source=req.source,
        )
    return row


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).isoformat() if t else ""


def _flat(value: Any) -> str:
    """A CSV cell: refusals as `signal by actor at time: why`, approvals as `by at time (via)`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, dict) and "signal" in item:  # a refused decision
                parts.append(f"{item['signal']} by {item['actor']} at {item['at']}: {item['why']}")
            elif isinstance(item, dict):  # an approval
                parts.append(f"{item['by']} at {item['at']} ({item['via']})")
            else:
                parts.append(str(item))
        return " | ".join(parts)
    return "" if value is None else str(value)


def write(rows: Sequence[dict[str, Any]], fmt: Format, out: TextIO) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps({k: row.get(k, "") for k in COLUMNS}) + "\n")
        return
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _flat(row.get(k, "")) for k in COLUMNS})


async def export(client: Client, since: datetime, until: datetime, fmt: Format, out: TextIO) -> int:
    """Write the window's requests to `out`; return how many."""
    rows = await records(client, since, until)
    write(rows, fmt, out)
    return len(rows)
