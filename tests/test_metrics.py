"""The worker's Prometheus endpoint: the SDK's metrics and rolecall's, scraped over HTTP.

A real `rolecall worker` process with ROLECALL_METRICS_BIND on a free port; requests end in
several states and the scrape must show each with its labels and values.
"""

from __future__ import annotations

from pathlib import Path

from rolecall.metrics import (
    OPEN_GRANTS,
    REQUESTS,
    REVOKE_FAILURES,
    REVOKE_LATENESS,
    TIME_TO_DECISION,
    TIME_TO_GRANT,
    parse_prometheus,
)
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.tcp_proxy import PostgresProxy
from tests.worker_process import WorkerProcess, start_worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape(worker: WorkerProcess) -> Samples:
    return parse_prometheus(worker.scrape())


async def test_metrics_after_requests(make_stack, roles: Roles, pg, tmp_path: Path) -> None:
    role = roles.role()
    alice, bob, carol = roles.login("alice"), roles.login("bob"), roles.login("carol")
    stack = await make_stack([role], worker=False)
    worker = start_worker(stack, tmp_path, metrics=True)
    q = {"task_queue": stack.task_queue}
    try:
        await worker.ready()
        # expired: approved, granted for 2 s, revoked by the timer
        expiring = await stack.request(alice, role, "2s")
        await stack.cli("approve", expiring, "--as", "dba@example.com")
        # open: granted until relinquished
        held = await stack.request(bob, role, "1h")
        await stack.cli("approve", held, "--as", "dba@example.com")
        await stack.wait_state(held, RequestState.GRANTED)
        # denied
        denied = await stack.request(carol, role, "1h")
        await stack.cli("deny", denied, "--as", "dba@example.com", "--reason", "no")
        await stack.wait_state(denied, RequestState.DENIED)
        final = await stack.wait_state(expiring, RequestState.EXPIRED)

        await eventually(
            lambda: value(scrape(worker), OPEN_GRANTS, instance="pg") == 1,
            timeout=20,
            what="open grants gauge = 1",
        )
        await stack.cli("relinquish", held, "--as", f"{bob}@example.com")
        await stack.wait_state(held, RequestState.RELINQUISHED)
        await eventually(
            lambda: value(scrape(worker), OPEN_GRANTS, instance="pg") == 0,
            timeout=20,
            what="open grants gauge = 0",
        )

        text = worker.scrape()
        s = parse_prometheus(text)
        # the SDK's own worker metrics share the endpoint
        assert value(s, "temporal_workflow_completed", **q) >= 3, text
        for sdk in (
            "temporal_activity_execution_latency",
            "temporal_workflow_task_schedule_to_start_latency",
        ):
            assert any(n.startswith(sdk) for n, _ in s), (sdk, text)

        pg_q = {"instance": "pg", **q}
        assert value(s, REQUESTS, outcome="expired", auto_approved="false", **pg_q) == 1
        assert value(s, REQUESTS, outcome="relinquished", **pg_q) == 1
        assert value(s, REQUESTS, outcome="denied", **pg_q) == 1
        assert value(s, REQUESTS, **pg_q) == 3
        assert value(s, TIME_TO_DECISION + "_count", decision="approved", **pg_q) == 2
        assert value(s, TIME_TO_DECISION + "_count", decision="denied", **pg_q) == 1
        assert value(s, TIME_TO_GRANT + "_count", **pg_q) == 2
        assert 0 < value(s, TIME_TO_GRANT + "_sum", **pg_q) < 60  # seconds, not milliseconds
        assert value(s, REVOKE_LATENESS + "_count", **pg_q) == 1
        assert final.revoked_at and final.expires_at
        lateness = (final.revoked_at - final.expires_at).total_seconds()
        assert abs(value(s, REVOKE_LATENESS + "_sum", **pg_q) - lateness) < 0.01
        assert value(s, REVOKE_LATENESS + "_bucket", le="5", **pg_q) == 1  # revoked within 5 s
        assert value(s, REVOKE_FAILURES, **pg_q) == 0
    finally:
        worker.stop()


async def test_revoke_failures_counted(make_stack, roles: Roles, pg, tmp_path: Path) -> None:
    """Each failed revoke attempt (database down) counts; the revoke still lands after."""
    role, login = roles.role(), roles.login()
    proxy = PostgresProxy(pg.dsn)
    await proxy.start()
    stack = await make_stack([role], worker=False, dsn=proxy.dsn, connect_timeout=1)
    worker = start_worker(stack, tmp_path, metrics=True)
    try:
        await worker.ready()
        rid = await stack.request(login, role)
        await stack.cli("approve", rid, "--as", "dba@example.com")
        await stack.wait_state(rid, RequestState.GRANTED)
        await proxy.stop()
        await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
        await eventually(
            lambda: value(scrape(worker), REVOKE_FAILURES, instance="pg") >= 2,
            timeout=30,
            what="two failed revoke attempts counted",
        )
        await proxy.start()
        await stack.wait_state(rid, RequestState.RELINQUISHED, timeout=40)
        assert not pg.is_member(login, role)
        s = scrape(worker)
        assert value(s, REQUESTS, outcome="relinquished", instance="pg") == 1
        assert value(s, REVOKE_FAILURES, instance="pg", activity_type="revoke_role") >= 2
    finally:
        worker.stop()
        await proxy.stop()
