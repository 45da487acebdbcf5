"""What the CLI and the Slack app do to requests, in one place.

Each operation answers quickly and clearly: the request is checked before `submit` returns,
and a decision is answered with what became of it (refused by the request's own policy, lost
to another click, or taken), in one round trip where the worker knows the decide update.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    QueryRejectCondition,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from rolecall import contract
from rolecall.durations import format_duration
from rolecall.errors import (
    BY_NAME,
    AlreadyRequested,
    BadDuration,
    BadRequest,
    NotAllowed,
    NotFound,
    RolecallError,
)
from rolecall.models import (
    AccessRequest,
    CatalogInput,
    DecideAnswer,
    DecideRequest,
    Decision,
    ExtendAnswer,
    ExtendRequest,
    Listed,
    Page,
    RequestState,
    RequestStatus,
    RoleList,
)
from rolecall.policy import DECISIONS, SIGNALS, claimed_origin, refusal
from rolecall.temporal import (
    APPROVERS,
    BREAK_GLASS,
    DATA_CONVERTER,
    EXPIRES_AT,
    INSTANCE,
    REQUESTER,
    ROLE,
    RULE,
    STATE,
    quote,
    request_id,
)

# How long a new request waits for a finished run with its id to close (that run is only
# sending its last notification).
_CLOSING_WAIT = 30.0


async def submit(client: Client, req: AccessRequest, task_queue: str) -> RequestStatus:
    """Start the request's workflow and wait for its check; raise the refusal as an error.

    The request id is the same for every request of one role by one person, so asking again
    right after a refusal can meet the refused run still open, telling its requester. That
    one is waited for (bounded), then the new request starts; an open one is a refusal.
    """
    if req.duration <= timedelta(0):
        raise BadDuration("duration must be positive")
    req = req.model_copy(update={"requester": req.requester.strip().lower()})
    wf_id = request_id(req.instance, req.role, req.requester)
    for attempt in (1, 2):
        start = _start(req, wf_id, task_queue)
        try:
            status: RequestStatus = await client.execute_update_with_start_workflow(
                contract.SUBMITTED, start_workflow_operation=start, result_type=RequestStatus
            )
            break
        except (WorkflowAlreadyStartedError, RPCError) as e:
            if isinstance(e, RPCError) and e.status != RPCStatusCode.ALREADY_EXISTS:
                raise
            with contextlib.suppress(Exception):  # its handle holds the same error: read it,
                await start.workflow_handle()  # or asyncio logs it as never retrieved
            # A second conflict is another request started meanwhile: an open one.
            still_open = await _still_open(client, wf_id) if attempt == 1 else RequestState.PENDING
            if still_open is not None and still_open.is_final:
                raise AlreadyRequested(
                    f"your previous request for role {req.role!r} on instance {req.instance!r} "
                    f"({wf_id}) is {still_open.value} and still closing: ask again in a minute"
                ) from None
            if still_open is not None:
                raise AlreadyRequested(
                    f"you already have a pending or active request for role {req.role!r} "
                    f"on instance {req.instance!r} ({wf_id})"
                ) from None
    if status.state == RequestState.REJECTED:
        raise error_for(status)
    return status


def _start(req: AccessRequest, wf_id: str, task_queue: str) -> WithStartWorkflowOperation[Any, RequestStatus]:
    return WithStartWorkflowOperation(
        contract.ACCESS_REQUEST,
        req,
        id=wf_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(REQUESTER, req.requester),
                SearchAttributePair(INSTANCE, req.instance),
                SearchAttributePair(ROLE, req.role),
                SearchAttributePair(STATE, RequestState.PENDING.value),
            ]
        ),
        static_summary=(
            f"{req.requester} requests {req.role} on {req.instance} for {format_duration(req.duration)}"
        ),
        static_details=f"reason: {req.reason or '(none given)'}\nsource: {req.source}",
        result_type=RequestStatus,
    )


async def _still_open(client: Client, wf_id: str) -> RequestState | None:
    """None once the run with this id has closed; else its state (a final one: not in time)."""
    try:
        existing = await get_status(client, wf_id)
    except NotFound:
        return None  # closed and gone meanwhile
    if not existing.state.is_final:
        return existing.state
    try:
        await asyncio.wait_for(handle(client, wf_id).result(), _CLOSING_WAIT)
    except TimeoutError:
        return existing.state
    except Exception:  # it closed another way (failed, terminated): closed all the same
        pass
    return None


def error_for(status: RequestStatus) -> RolecallError:
    cls = BY_NAME.get(status.error_type or "", RolecallError)
    return cls(status.error or f"request {status.id} is {status.state.value}")


def handle(client: Client, request_id: str) -> WorkflowHandle[Any, RequestStatus]:
    return client.get_workflow_handle(request_id, result_type=RequestStatus)


async def get_status(client: Client, request_id: str) -> RequestStatus:
    """The open request's status query, or the closed one's result.

    One round trip for an open request (every click's pre-check): the server refuses the
    query of a closed workflow instead of having a worker replay it, and says how it closed.
    """
    h = handle(client, request_id)
    try:
        status: RequestStatus = await h.query(
            contract.STATUS, result_type=RequestStatus, reject_condition=QueryRejectCondition.NOT_OPEN
        )
        return status
    except WorkflowQueryRejectedError as e:
        closed = e.status
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"no request with id {request_id!r}") from None
        raise
    if closed == WorkflowExecutionStatus.COMPLETED:
        return await h.result()
    raise RolecallError(f"request {request_id} ended abnormally: {closed.name if closed else '?'}")


# How long a decision waits for the workflow's answer. A view submission (the deny modal)
# must be acknowledged within 3 s of Slack's request, so the answer must come well before.
DECIDE_WAIT = 2.5


async def decide(
    client: Client, request_id: str, signal: str, decision: Decision, wait: float = DECIDE_WAIT
) -> DecideAnswer:
    """Send approve / deny / cancel / relinquish / review; answer what became of it.

    One round trip: the decide update, whose validator refuses what the pre-check used to (a
    clear line, nothing recorded) and whose answer carries a refusal the workflow recorded (a
    race lost). A worker of an older release (a rolling deploy) does not know the update:
    then the pre-check, the signal and a short wait for its outcome, as before.

    A decision from Slack comes signed for this request and signal (rolecall.signing); the
    signature covers the actor lower-cased, so lower-casing it here keeps it valid.
    """
    if signal not in SIGNALS:
        raise BadRequest(f"unknown action {signal!r}")
    decision = decision.model_copy(update={"actor": decision.actor.strip().lower()})
    try:
        answer: DecideAnswer = await asyncio.wait_for(
            handle(client, request_id).execute_update(
                contract.DECIDE,
                DecideRequest(signal=signal, decision=decision),
                result_type=DecideAnswer,
                rpc_timeout=timedelta(seconds=wait),
            ),
            wait,
        )
        return answer
    except WorkflowUpdateFailedError as e:
        cause = e.cause.cause if isinstance(e.cause, ActivityError) else e.cause
        why = str(getattr(cause, "message", None) or cause or e)
        if "expected but not found" not in why:
            raise NotAllowed(why) from None
    except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError):
        # Not refused, not yet taken: the server holds the update until a worker picks the
        # request up. Sending the signal as well would make a second decision of it.
        raise RolecallError(
            f"rolecall's worker has not answered within {wait:g} s; your {signal} may still "
            "count when it is back: the request's card will show it"
        ) from None
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
        # A closed or unknown request: the status says which, in the caller's one line.
    return await _decide_by_signal(client, request_id, signal, decision, wait)


async def _decide_by_signal(
    client: Client, request_id: str, signal: str, decision: Decision, wait: float
) -> DecideAnswer:
    """The path before the decide update: pre-check, signal, then watch the status settle."""
    before = await get_status(client, request_id)
    why = refusal(signal, decision.actor, before, claimed_origin(decision))
    if why:
        raise NotAllowed(why)
    await handle(client, request_id).signal(signal, decision)
    actor = decision.actor
    deadline = asyncio.get_running_loop().time() + wait
    status = before
    while asyncio.get_running_loop().time() < deadline:
        status = await get_status(client, request_id)
        mine = [r for r in status.refused[len(before.refused) :] if r.actor == actor and r.signal == signal]
        if mine:
            return DecideAnswer(status=status, refused=mine[-1].why)
        if _settled(signal, actor, status):
            lost = signal in DECISIONS and status.state != RequestState.PENDING and status.decided_by != actor
            if signal == "review" and status.reviewed_by != actor:
                return DecideAnswer(status=status, refused=f"already reviewed by {status.reviewed_by}")
            if lost:
                why = refusal(signal, actor, status, claimed_origin(decision))
                return DecideAnswer(status=status, refused=why or f"already decided by {status.decided_by}")
            return DecideAnswer(status=status)
        await asyncio.sleep(0.1)
    return DecideAnswer(status=status)


def _settled(signal: str, actor: str, status: RequestStatus) -> bool:
    """Whether the status shows the outcome of `actor`'s `signal` (taken, or lost to another)."""
    if signal in DECISIONS:
        return status.state != RequestState.PENDING or (
            signal == "approve" and any(a.by == actor for a in status.approvals)
        )
    if signal == "relinquish":
        return status.state != RequestState.GRANTED
    if signal == "review":
        return bool(status.reviewed_by)
    return False


async def extend(client: Client, request_id: str, decision: Decision, by: timedelta) -> ExtendAnswer:
    """Ask for more time; the workflow's own validator refuses with the reason (nothing changes)."""
    if by <= timedelta(0):
        raise BadDuration("the extension must be a positive duration")
    decision = decision.model_copy(update={"actor": decision.actor.strip().lower()})
    await get_status(client, request_id)  # a clear line for an unknown or closed request
    try:
        answer: ExtendAnswer = await handle(client, request_id).execute_update(
            contract.EXTEND, ExtendRequest(decision=decision, by=by), result_type=ExtendAnswer
        )
        return answer
    except WorkflowUpdateFailedError as e:
        cause = e.cause.cause if isinstance(e.cause, ActivityError) else e.cause
        raise NotAllowed(str(getattr(cause, "message", None) or cause or e)) from None


async def list_requests(
    client: Client, state: str | None = None, requester: str | None = None, limit: int = 200
) -> list[dict[str, str]]:
    """Rows from the visibility store: id, state, requester, instance, role, started."""
    clauses = [f'WorkflowType = "{contract.ACCESS_REQUEST}"', contract.ONE_RUN_PER_REQUEST]
    if state:
        if state not in {s.value for s in RequestState}:
            raise BadRequest(f"unknown state {state!r} (one of: {', '.join(s.value for s in RequestState)})")
        clauses.append(f'{STATE.name} = "{state}"')
    if requester:
        clauses.append(f'{REQUESTER.name} = "{quote(requester.lower())}"')
    rows: list[dict[str, str]] = []
    async for wf in client.list_workflows(" AND ".join(clauses), limit=limit):
        sa = wf.typed_search_attributes
        rows.append(
            {
                "id": wf.id,
                "state": sa.get(STATE) or "",
                "requester": sa.get(REQUESTER) or "",
                "instance": sa.get(INSTANCE) or "",
                "role": sa.get(ROLE) or "",
                "started": requested_at(wf).isoformat(),
            }
        )
    return rows


async def catalog_roles(client: Client, task_queue: str, instance: str, wait: float = 1.5) -> RoleList:
    """The instance's role list from its catalog workflow on the worker side, started if missing.

    The Slack app asks this instead of reading pg_roles itself: it holds no database
    credentials. Polls briefly for the first listing of a catalog that was just started.
    """
    wf_id = contract.catalog_id(task_queue, instance)
    deadline = asyncio.get_running_loop().time() + wait
    started = False
    while True:
        try:
            found: RoleList = await client.get_workflow_handle(wf_id).query(
                contract.CATALOG_ROLES, result_type=RoleList, rpc_timeout=timedelta(seconds=wait)
            )
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND or started:
                raise
            found = RoleList()
        if found.loaded or asyncio.get_running_loop().time() > deadline:
            return found
        if not started:
            started = True
            await client.start_workflow(
                contract.CATALOG,
                CatalogInput(instance=instance),
                id=wf_id,
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
        await asyncio.sleep(0.05)


def _query(
    states: list[str] | None, requester: str | None, approver: str | None, not_requester: str | None
) -> str:
    clauses = [f'WorkflowType = "{contract.ACCESS_REQUEST}"', contract.ONE_RUN_PER_REQUEST]
    known = {s.value for s in RequestState}
    for state in states or []:
        if state not in known:
            raise BadRequest(f"unknown state {state!r} (one of: {', '.join(sorted(known))})")
    if states:
        clauses.append(f"{STATE.name} IN ({', '.join(f'{chr(34)}{s}{chr(34)}' for s in states)})")
    if requester:
        clauses.append(f'{REQUESTER.name} = "{quote(requester.strip().lower())}"')
    if approver:
        clauses.append(f'{APPROVERS.name} = "{quote(approver.strip().lower())}"')
    if not_requester:
        clauses.append(f'{REQUESTER.name} != "{quote(not_requester.strip().lower())}"')
    return " AND ".join(clauses)


async def page_requests(
    client: Client,
    *,
    states: list[str] | None = None,
    requester: str | None = None,
    approver: str | None = None,
    not_requester: str | None = None,
    page_size: int = 25,
    page: str | None = None,
) -> Page:
    """A page of requests from the visibility store (newest first) and the count of all.

    Lists at organisation scale read only search attributes: no status query per request,
    so a list of thousands costs two visibility calls and waits for no worker.
    """
    query = _query(states, requester, approver, not_requester)
    token: bytes | None = None
    if page:
        try:
            token = base64.urlsafe_b64decode(page.encode())
        except (binascii.Error, ValueError):
            raise BadRequest("that page of the list is no longer valid: open it again") from None
    it = client.list_workflows(query, page_size=page_size, next_page_token=token)
    await it.fetch_next_page(page_size=page_size)
    rows = [_listed(wf) for wf in it.current_page or []]
    nxt = it.next_page_token
    count = await client.count_workflows(query)
    return Page(
        rows=rows,
        total=count.count,
        next_page=base64.urlsafe_b64encode(nxt).decode() if nxt else None,
    )


def requested_at(wf: WorkflowExecution) -> datetime:
    """When the request began: its run's start, or for a continued run what its memo kept."""
    raw = wf.raw_info.memo.fields.get(contract.REQUESTED_AT)
    if raw is None:
        return wf.start_time
    return datetime.fromisoformat(DATA_CONVERTER.payload_converter.from_payload(raw, str))


def _listed(wf: WorkflowExecution) -> Listed:
    sa = wf.typed_search_attributes
    return Listed(
        id=wf.id,
        state=sa.get(STATE) or "",
        requester=sa.get(REQUESTER) or "",
        instance=sa.get(INSTANCE) or "",
        role=sa.get(ROLE) or "",
        started=requested_at(wf),
        expires_at=sa.get(EXPIRES_AT),
        rule=sa.get(RULE) or "",
        break_glass=bool(sa.get(BREAK_GLASS)),
    )
