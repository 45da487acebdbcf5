"""rolecall's own Prometheus metrics, on the same endpoint as the Temporal SDK's.

The worker builds one `Runtime` with a Prometheus exporter (`ROLECALL_METRICS_BIND`); the SDK
publishes its worker metrics there (`temporal_*`), and rolecall adds through the same meter:

- `rolecall_requests{instance, outcome, auto_approved}`: requests that reached a final state;
- `rolecall_time_to_decision_seconds{instance, decision, auto_approved}`: request to decision;
- `rolecall_time_to_grant_seconds{instance, auto_approved}`: request to membership granted;
- `rolecall_revoke_lateness_seconds{instance}`: revoked_at - expires_at of expired grants;
- `rolecall_revoke_failures{instance}`: failed revoke attempts (each one is retried);
- `rolecall_open_grants{instance}`: requests in `granted` or `revoking` on this task queue.

The first three come from the workflow through `workflow.metric_meter()`, which records
nothing while a history is replayed, so a replay never counts a request twice. Revoke
failures come from an activity interceptor, open grants from the visibility store.
This module is imported by the workflow (passed through the sandbox): no I/O at import.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from rolecall import contract
from rolecall.models import RequestState, RequestStatus
from rolecall.temporal import quote

log = logging.getLogger("rolecall.metrics")

REQUESTS = "rolecall_requests"
TIME_TO_DECISION = "rolecall_time_to_decision_seconds"
TIME_TO_GRANT = "rolecall_time_to_grant_seconds"
REVOKE_LATENESS = "rolecall_revoke_lateness_seconds"
REVOKE_FAILURES = "rolecall_revoke_failures"
OPEN_GRANTS = "rolecall_open_grants"

# Seconds. Decisions take minutes to hours; grants seconds (or as long as the decision);
# a revoke should land within seconds of expiry, and minutes late is an incident.
_HUMAN = [1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0]
BUCKETS: dict[str, list[float]] = {
    TIME_TO_DECISION: _HUMAN,
    TIME_TO_GRANT: _HUMAN,
    REVOKE_LATENESS: [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
}
_DECIDED = {RequestState.APPROVED, RequestState.DENIED, RequestState.CANCELLED}


def prometheus_runtime(bind_address: str) -> Runtime:
    """A runtime that serves every metric of the clients and workers built on it at /metrics."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind_address,
                durations_as_seconds=True,
                histogram_bucket_overrides=BUCKETS,
            )
        )
    )


def _flag(value: bool) -> str:
    return "true" if value else "false"


def observe(status: RequestStatus, seen: set[str]) -> None:
    """Record what the state change to `status.state` completes; call from the workflow only.

    `seen` lives in the workflow instance, so each request records each metric once even
    though some states are set twice (a failed grant is `failed` before and after cleanup).
    """
    s = status
    meter = workflow.metric_meter()
    auto = _flag(s.auto_approved)
    if "decision" not in seen and s.decided_at is not None and s.state in _DECIDED:
        seen.add("decision")
        meter.create_histogram_timedelta(TIME_TO_DECISION, "time from request to decision", "s").record(
            max(s.decided_at - s.requested_at, timedelta(0)),
            {"instance": s.instance, "decision": s.state.value, "auto_approved": auto},
        )
    if "grant" not in seen and s.state == RequestState.GRANTED and s.granted_at is not None:
        seen.add("grant")
        meter.create_histogram_timedelta(TIME_TO_GRANT, "time from request to grant", "s").record(
            max(s.granted_at - s.requested_at, timedelta(0)),
            {"instance": s.instance, "auto_approved": auto},
        )
    if "final" not in seen and s.state.is_final:
        seen.add("final")
        meter.create_counter(REQUESTS, "requests by final state").add(
            1, {"instance": s.instance, "outcome": s.state.value, "auto_approved": auto}
        )
        if s.state == RequestState.EXPIRED and s.revoked_at and s.expires_at:
            meter.create_histogram_timedelta(
                REVOKE_LATENESS, "revoked_at - expires_at of expired grants", "s"
            ).record(max(s.revoked_at - s.expires_at, timedelta(0)), {"instance": s.instance})


class MetricsInterceptor(Interceptor):
    """Counts failed revoke attempts, labelled by instance (each failure is retried)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityMetrics(next)


class _ActivityMetrics(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except Exception:
            if activity.info().activity_type == "revoke_role":
                instance = getattr(input.args[0], "instance", "") if input.args else ""
                activity.metric_meter().create_counter(
                    REVOKE_FAILURES, "failed revoke attempts (each is retried)"
                ).add(1, {"instance": str(instance)})
            raise


def open_grants_query(task_queue: str, instance: str) -> str:
    return (
        f'WorkflowType = "{contract.ACCESS_REQUEST}" AND TaskQueue = "{quote(task_queue)}" '
        f'AND RolecallInstance = "{quote(instance)}" AND RolecallState IN ("granted", "revoking") '
        f"AND {contract.ONE_RUN_PER_REQUEST}"
    )


async def report_open_grants(
    client: Client,
    meter: MetricMeter,
    task_queue: str,
    instances: Callable[[], Iterable[str]],
    interval: float = 5.0,
) -> None:
    """Set `rolecall_open_grants{instance}` from the visibility store, every `interval` s.

    Every worker reports the same numbers (they count the task queue, not themselves), so
    aggregate with `max by (instance)`, not `sum`. Runs until cancelled.
    """
    gauge = meter.create_gauge(OPEN_GRANTS, "requests granted or revoking, from Temporal visibility")
    reported: set[str] = set()
    while True:
        try:
            names = set(instances())
            for name in sorted(names | reported):
                count = 0
                if name in names:
                    count = (await client.count_workflows(open_grants_query(task_queue, name))).count
                gauge.set(count, {"instance": name})
            reported = names
        except asyncio.CancelledError:
            raise
        except Exception as e:  # visibility hiccups must not stop the worker
            log.warning("open grants not counted: %s", e)
        await asyncio.sleep(interval)


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a /metrics page: {(name, labels): value}. For tests and `rolecall` checks."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: Mapping[str, str] = {}
        if rest:
            labels = dict(_labels(rest.rstrip("}")))
        samples[(name, frozenset(labels.items()))] = float(value)
    return samples


def _labels(text: str) -> Iterable[tuple[str, str]]:
    i = 0
    while i < len(text):
        eq = text.index("=", i)
        key = text[i:eq].strip(", ")
        j = eq + 2  # past ="
        out = []
        while text[j] != '"':
            if text[j] == "\\":
                j += 1
            out.append(text[j])
            j += 1
        yield key, "".join(out)
        i = j + 1
