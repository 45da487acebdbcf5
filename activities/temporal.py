"""What Temporal knows: the ledger of what rolecall holds. Used by the reconciler.

Contract: reads Temporal's visibility store and histories; writes nothing. The ledger is the
proof the reconciler needs before it revokes anything: a request that granted the role to
that login and never verified its revoke. Every request upserts `RolecallLogin` and, while
it may hold a grant, `RolecallExpiresAt`; the attribute is removed once the revoke is proven.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import MarkerRecordedEventAttributes
from temporalio.client import Client, WorkflowExecution, WorkflowHandle
from temporalio.converter import DataConverter

from rolecall import contract
from rolecall.config import ConfigStore, Instance
from rolecall.models import (
    AccessRequest,
    CheckResult,
    GrantResult,
    Ledger,
    ReconcileInput,
    RequestStatus,
    StrandedGrant,
)
from rolecall.temporal import EXPIRES_AT, INSTANCE, LOGIN, REQUESTER, ROLE, quote

LOCAL_ACTIVITY_MARKER = "core_local_activity"


async def _local_result(
    converter: DataConverter, marker: MarkerRecordedEventAttributes
) -> tuple[str, Sequence[Payload]] | None:
    """(activity type, result payloads) of a local activity's marker; None for other markers.

    The SDK records a completed local activity as a `core_local_activity` marker whose
    `data` is a JSON object naming the activity and whose `result` holds its return value.
    """
    if marker.marker_name != LOCAL_ACTIVITY_MARKER or "result" not in marker.details:
        return None
    data = marker.details.get("data")
    if data is None or not data.payloads:
        return None
    [meta] = await converter.decode(data.payloads, [dict])
    kind = meta.get("activity_type") if isinstance(meta, dict) else None
    return (kind, marker.details["result"].payloads) if isinstance(kind, str) else None


async def _held_grant(
    converter: DataConverter, payloads: Sequence[Payload]
) -> tuple[CheckResult, GrantResult] | None:
    """A continued run's check and grant: they came in its input (HeldGrant), not its history."""
    if not payloads:
        return None
    [req] = await converter.decode(payloads, [AccessRequest])
    held = req.held
    if held is None or held.status.db_user is None or held.status.duration is None:
        return None
    check = CheckResult(db_user=held.status.db_user, duration=held.status.duration, policy=held.policy)
    return check, held.grant


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TemporalActivities:
    def __init__(self, client: Client, config: ConfigStore) -> None:
        self._client = client
        self._config = config

    @activity.defn(name="ledger")
    async def ledger(self, inp: ReconcileInput) -> Ledger:
        """Requests past expiry plus grace that may still hold their grant, and the healthy rest.

        Open and closed workflows alike (a terminated request is closed but its grant stays),
        within the namespace's retention; only this deployment's task queue.
        """
        config = self._config.get()
        cutoff = datetime.now(UTC) - config.reconcile.grace
        base = (
            f'WorkflowType = "{contract.ACCESS_REQUEST}" AND {INSTANCE.name} = "{quote(inp.instance)}" '
            f'AND TaskQueue = "{quote(activity.info().task_queue)}" AND {contract.ONE_RUN_PER_REQUEST}'
        )
        stranded: list[StrandedGrant] = []
        async for wf in self._client.list_workflows(f'{base} AND {EXPIRES_AT.name} < "{_rfc3339(cutoff)}"'):
            found = await self._stranded(wf)
            if found is not None:
                stranded.append(found)
            activity.heartbeat()
        seen = {(g.request_id, g.run_id) for g in stranded}
        protected = await self._open_pairs(
            f'{base} AND ExecutionStatus = "Running"', config.instances.get(inp.instance), seen
        )
        return Ledger(protected=sorted(protected), stranded=stranded)

    async def _stranded(self, wf: WorkflowExecution) -> StrandedGrant | None:
        sa = wf.typed_search_attributes
        role, login, expires = sa.get(ROLE), sa.get(LOGIN), sa.get(EXPIRES_AT)
        if not (role and login and expires):
            return None
        check, grant = await self._results(self._client.get_workflow_handle(wf.id, run_id=wf.run_id))
        policy = check.policy if check else None
        return StrandedGrant(
            request_id=wf.id,
            run_id=wf.run_id,
            execution=wf.status.name.replace("_", " ").lower() if wf.status else "unknown",
            role=role,
            login=login,
            expires_at=expires,
            target=policy.target if policy else None,
            terminate_sessions=policy.terminate_sessions if policy else True,
            channel=policy.slack_channel if policy else None,
            row_xmin=grant.row_xmin if grant else None,
        )

    async def _results(
        self, handle: WorkflowHandle[Any, Any]
    ) -> tuple[CheckResult | None, GrantResult | None]:
        """The request's check and grant, read from its history: where, how, and which row.

        Read from the history rather than queried, so it works for terminated workflows and
        for workflows whose tasks fail (a query would need a worker to replay them).
        """
        scheduled: dict[int, str] = {}
        check: CheckResult | None = None
        grant: GrantResult | None = None
        converter = self._client.data_converter
        async for event in handle.fetch_history_events():
            if event.HasField("workflow_execution_started_event_attributes"):
                # A held grant continues in a fresh run (HeldGrant), which starts with it.
                started = event.workflow_execution_started_event_attributes
                held = await _held_grant(converter, started.input.payloads)
                if held is not None:
                    check, grant = held
            elif event.HasField("marker_recorded_event_attributes"):
                # The check runs as a local activity since "local-database-reads": its
                # result is in the marker the SDK records for it.
                found = await _local_result(converter, event.marker_recorded_event_attributes)
                if found is not None and found[0] == "check_request":
                    [check] = await converter.decode(found[1], [CheckResult])
            elif event.HasField("activity_task_scheduled_event_attributes"):
                name = event.activity_task_scheduled_event_attributes.activity_type.name
                if name in ("check_request", "grant_role"):
                    scheduled[event.event_id] = name
            elif event.HasField("activity_task_completed_event_attributes"):
                done = event.activity_task_completed_event_attributes
                kind = scheduled.get(done.scheduled_event_id)
                if kind == "check_request":
                    [check] = await converter.decode(done.result.payloads, [CheckResult])
                elif kind == "grant_role":
                    [grant] = await converter.decode(done.result.payloads, [GrantResult])
        return check, grant

    async def _open_pairs(
        self, query: str, inst: Instance | None, skip: set[tuple[str, str | None]]
    ) -> set[tuple[str, str]]:
        """(role, login) of every healthy open request, whatever its state.

        Conservative on purpose: the login its search attribute names, else (requests from
        before it existed) the one its status reports, else the one the config maps to.
        """
        pairs: set[tuple[str, str]] = set()
        handles = []
        async for wf in self._client.list_workflows(query):
            if (wf.id, wf.run_id) in skip:
                continue
            sa = wf.typed_search_attributes
            role, requester, login = sa.get(ROLE), sa.get(REQUESTER), sa.get(LOGIN)
            if role and login:
                pairs.add((role, login))
                continue
            if role and requester and inst is not None:
                pairs.add((role, inst.login_for(requester)))
            handles.append(self._client.get_workflow_handle(wf.id, run_id=wf.run_id))
        limit = asyncio.Semaphore(16)

        async def status(h: WorkflowHandle[Any, Any]) -> None:
            async with limit:
                try:
                    s = await h.query(
                        contract.STATUS, result_type=RequestStatus, rpc_timeout=timedelta(seconds=10)
                    )
                except Exception as e:  # an unreadable status keeps the config-mapped pair
                    activity.logger.warning("status of %s unreadable: %s", h, e)
                    return
                if s.db_user:
                    pairs.add((s.role, s.db_user))

        await asyncio.gather(*(status(h) for h in handles))
        return pairs
