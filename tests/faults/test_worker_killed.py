"""A `rolecall worker` process SIGKILLed in the middle of a grant, of a revoke, and while a
grant runs, with the replacement only started after the expiry time.

The statement in flight is held inside a TCP proxy in front of PostgreSQL (nothing sleeps in
product code), so the kill lands exactly inside the activity. Already covered elsewhere:
killed while granted and restarted at once (tests/test_durability.py).
"""

from __future__ import annotations

import time
from datetime import timedelta

from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.faults.support import (
    HoldingProxy,
    assert_no_grant_left_behind,
    sigkill,
    worker_process,
)

# An activity attempt whose worker died is only retried when its start-to-close timeout
# runs out (no heartbeats): 30 s for grant_role, 60 s for revoke_role (workflows/access_request.py).
GRANT_ATTEMPT_TIMEOUT = 30
REVOKE_ATTEMPT_TIMEOUT = 60


async def test_killed_during_grant_the_grant_lands_and_is_revoked_on_time(
    make_stack, roles: Roles, pg
) -> None:
    """SIGKILL while GRANT is in flight; the GRANT still commits (its answer is lost).

    Bound: the new worker's retry confirms the grant within 30 s (the attempt's
    start-to-close timeout) + 10 s; the membership is revoked no later than expiry + 5 s.
    The membership exists from the lost GRANT on, so it may last up to duration + 40 s.
    """
    role, login = roles.role(), roles.login()
    proxy = HoldingProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], dsn=proxy.dsn, worker=False, connect_timeout=2)
    proc = worker_process(stack.config_path, stack.address, stack.task_queue)
    try:
        rid = await stack.request(login, role, "3s")
        proxy.hold(b'GRANT "')
        await stack.cli("approve", rid, "--as", "dba@example.com")
        await eventually(lambda: bool(proxy.held), 20, "the GRANT to reach the proxy")
        sigkill(proc)
        proxy.release(forward=True)  # the dead worker's GRANT reaches the server and commits
        await eventually(lambda: pg.is_member(login, role), 10, "the orphaned GRANT to commit")
        landed = time.time()
        proc = worker_process(stack.config_path, stack.address, stack.task_queue)
        assert (await stack.status(rid)).state == RequestState.APPROVED  # the attempt is still out
        granted = await stack.wait_state(rid, RequestState.GRANTED, timeout=GRANT_ATTEMPT_TIMEOUT + 10)
        assert not granted.pre_existing, "the lost GRANT was mistaken for a pre-existing membership"
        final = await stack.wait_state(rid, RequestState.EXPIRED, timeout=20)
        assert final.revoked_at is not None
        assert final.revoked_at.timestamp() - landed < 3 + GRANT_ATTEMPT_TIMEOUT + 10
        await assert_no_grant_left_behind(stack.client, pg, final, login, role, timedelta(seconds=5))
    finally:
        sigkill(proc)
        proxy.release(forward=False)
        await proxy.stop()


async def test_killed_during_revoke_the_next_attempt_revokes(make_stack, roles: Roles, pg) -> None:
    """SIGKILL while REVOKE is in flight; that REVOKE never reaches the server.

    Bound: revoked no later than expiry + 60 s (the revoke attempt's start-to-close timeout)
    + 1 s (first retry) + 9 s (worker start-up, polling). Measured: about 62 s.
    """
    role, login = roles.role(), roles.login()
    proxy = HoldingProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], dsn=proxy.dsn, worker=False, connect_timeout=2)
    proc = worker_process(stack.config_path, stack.address, stack.task_queue)
    try:
        rid = await stack.request(login, role, "2s")
        proxy.hold(b'REVOKE "')
        await stack.cli("approve", rid, "--as", "dba@example.com")
        await stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        await eventually(lambda: bool(proxy.held), 20, "the REVOKE to reach the proxy")
        sigkill(proc)
        proxy.release(forward=False)  # the REVOKE dies with its worker
        proc = worker_process(stack.config_path, stack.address, stack.task_queue)
        assert (await stack.status(rid)).state == RequestState.REVOKING
        assert pg.is_member(login, role)
        final = await stack.wait_state(rid, RequestState.EXPIRED, timeout=REVOKE_ATTEMPT_TIMEOUT + 15)
        bound = timedelta(seconds=REVOKE_ATTEMPT_TIMEOUT + 1 + 9)
        await assert_no_grant_left_behind(stack.client, pg, final, login, role, bound)
    finally:
        sigkill(proc)
        proxy.release(forward=False)
        await proxy.stop()


async def test_killed_while_granted_restarted_after_expiry(make_stack, roles: Roles, pg) -> None:
    """No worker at all when the grant expires; one is started 4 s after expiry.

    Bound: revoked within 15 s of the restart (start-up + the 5 s sticky-queue timeout),
    i.e. expiry + 4 s + 15 s; the expiry timer itself fired on the server meanwhile.
    """
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], worker=False)
    proc = worker_process(stack.config_path, stack.address, stack.task_queue)
    try:
        rid = await stack.request(login, role, "3s")
        await stack.cli("approve", rid, "--as", "dba@example.com")
        granted = await stack.wait_state(rid, RequestState.GRANTED, timeout=20)
        sigkill(proc)
        assert granted.expires_at is not None
        await eventually(lambda: time.time() > granted.expires_at.timestamp() + 4, 15, "expiry + 4 s")
        assert pg.is_member(login, role)  # nobody could revoke yet
        restarted = time.time()
        proc = worker_process(stack.config_path, stack.address, stack.task_queue)
        await eventually(lambda: not pg.is_member(login, role), 20, "the revoke after restart")
        assert time.time() - restarted < 15
        final = await stack.wait_state(rid, RequestState.EXPIRED, timeout=10)
        await assert_no_grant_left_behind(stack.client, pg, final, login, role, timedelta(seconds=4 + 15))
    finally:
        sigkill(proc)
