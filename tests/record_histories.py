"""Record workflow histories for the replay test: run once per released workflow version.

    .venv/bin/python -m tests.record_histories

Each scenario runs against a real dev server and PostgreSQL (ROLECALL_TEST_DSN or pgserver)
and its history is written to tests/histories/<VERSION>-<scenario>.json. Bump VERSION with
every change to the workflow's commands (each one guarded by workflow.patched), and keep the
older files: the replay test proves requests started on every earlier version still finish.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from temporalio.testing import WorkflowEnvironment

from rolecall.config import ConfigStore
from rolecall.models import AccessRequest, Decision, RequestState
from rolecall.operations import decide, extend, get_status, handle, submit
from rolecall.signing import sign
from rolecall.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from tests.conftest import DECISION_KEY, temporal_binary
from worker import build_worker

# v2: skip-disabled-oncall, approval-told-with-grant; v3: ledger-search-attributes;
# v4: verified-decisions, first-decision-wins, decision-at-timeout-wins (signed Slack decisions,
# two decisions in one task, an approval in the same task as the approval timeout);
# v5: rule-search-attributes, rules (two of two approvals, break-glass reviewed after escalation)
# v6: day-two (expiry loop with warning and extensions, reminders)
# v7: local-database-reads (the check and the look before the GRANT as local activities)
# v8: changed-search-attributes (upserts carry only what changed), and every patch up to it
#     folded into one marker, v8-folded (workflows/patches.py)
# v9: held-grant-continues (a grant held past 15 s continues in a fresh run), folded with
#     every earlier patch into v9-folded; recorded: both runs of a continued request
# v10: revoking-indexed-when-failing ("revoking" reaches visibility only when the revoke
#     fails), folded with every earlier patch into v10-folded
# v11: burst-tail-after-revokes (an expiry woken late indexes and tells after a jittered
#     wait), folded with every earlier patch into v11-folded
# v12: no new patch; decisions arrive as the decide update (operations.decide), so the
#     histories hold update-accepted/completed events where earlier ones hold signals
VERSION = "v12"
NUMBER = int(VERSION[1:])  # compared as a number: "v10" < "v9" as strings
OUT = Path(__file__).parent / "histories"


async def main() -> None:
    dsn = os.environ.get("ROLECALL_TEST_DSN")
    if not dsn:
        import pgserver

        dsn = str(pgserver.get_server(Path(tempfile.mkdtemp()), cleanup_mode="delete").get_uri())
    os.environ["ROLECALL_RECORD_DSN"] = dsn
    prefix = f"rec{uuid.uuid4().hex[:6]}"
    role, login, billing = f"{prefix}_ro", f"{prefix}_alice", f"{prefix}_billing"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in (role, billing):
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
    config = Path(tempfile.mkdtemp()) / "rolecall.toml"
    config.write_text(
        f'[instances.pg]\ndsn_env = "ROLECALL_RECORD_DSN"\nroles = ["{role}", "{billing}"]\n'
        'approvers = ["dba@example.com"]\napproval_timeout = "2s"\n'
        f'[[instances.pg.rules]]\nname = "billing"\nroles = ["{billing}"]\n'
        'approvers = ["dba@example.com", "dba2@example.com"]\napprovals_required = 2\n'
        'break_glass = true\nbreak_glass_max = "2s"\nreview_within = "2s"\n'
    )
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
    )
    client = env.client
    email = f"{login}@example.com"
    dba = Decision(actor="dba@example.com")
    me = Decision(actor=email)

    async def scenario(name: str, duration: timedelta, steps: list[tuple[str, Decision]]) -> None:
        s = await submit(
            client,
            AccessRequest(requester=email, instance="pg", role=role, duration=duration),
            "record",
        )
        for signal, who in steps:
            await asyncio.sleep(0.5)
            await decide(client, s.id, signal, who)
        h = handle(client, s.id)
        await h.result()
        history = await h.fetch_history()
        (OUT / f"{VERSION}-{name}.json").write_text(history.to_json())
        print(name, (await get_status(client, s.id)).state.value)

    def worker() -> Any:
        return build_worker(client, ConfigStore(config), "record", decision_key=DECISION_KEY)

    def signed(rid: str, signal: str) -> Decision:
        d = Decision(actor="dba@example.com", via="slack", slack_user_id="UDBA")
        return sign(DECISION_KEY, rid, signal, d, datetime.now(UTC))

    async def offline(name: str, wait: float, steps: list[tuple[str, str]]) -> None:
        """Signals (and timers) that reach the workflow while no worker runs: one task."""
        async with worker():
            s = await submit(
                client,
                AccessRequest(requester=email, instance="pg", role=role, duration=timedelta(seconds=2)),
                "record",
            )
        await asyncio.sleep(wait)
        h = handle(client, s.id)
        for signal, kind in steps:
            await h.signal(signal, signed(s.id, signal) if kind == "signed" else dba)
        async with worker():
            await h.result()
        (OUT / f"{VERSION}-{name}.json").write_text((await h.fetch_history()).to_json())
        print(name, (await get_status(client, s.id)).state.value)

    async def continued() -> None:
        """A grant held past 15 s: the run that hands it on, and the run that ends it."""
        async with worker():
            s = await submit(
                client,
                AccessRequest(requester=email, instance="pg", role=role, duration=timedelta(seconds=75)),
                "record",
            )
            h = handle(client, s.id)
            first = (await h.describe()).run_id
            await asyncio.sleep(0.5)
            await decide(client, s.id, "approve", dba)
            for _ in range(150):
                if (await h.describe()).run_id != first:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1)
            await decide(client, s.id, "relinquish", me)
            await h.result()
            first_run = client.get_workflow_handle(s.id, run_id=first)
            (OUT / f"{VERSION}-continued_first_run.json").write_text(
                (await first_run.fetch_history()).to_json()
            )
            (OUT / f"{VERSION}-continued_relinquished.json").write_text((await h.fetch_history()).to_json())
            print("continued", (await get_status(client, s.id)).state.value)

    async def expired_late() -> None:
        """An expiry whose task starts seconds late (no worker then, as if queued in a burst):
        the REVOKE, then the burst tail's timer before "expired" is indexed and told."""
        async with worker():
            s = await submit(
                client,
                AccessRequest(requester=email, instance="pg", role=role, duration=timedelta(seconds=3)),
                "record",
            )
            await asyncio.sleep(0.5)
            await decide(client, s.id, "approve", dba)
            for _ in range(40):
                if (await get_status(client, s.id)).state == RequestState.GRANTED:
                    break
                await asyncio.sleep(0.25)
        await asyncio.sleep(7)
        h = handle(client, s.id)
        async with worker():
            await h.result()
        (OUT / f"{VERSION}-expired_late.json").write_text((await h.fetch_history()).to_json())
        print("expired_late", (await get_status(client, s.id)).state.value)

    OUT.mkdir(exist_ok=True)
    try:
        if NUMBER >= 11:
            await expired_late()
        if NUMBER >= 9:
            await continued()
        if NUMBER >= 6:
            async with worker():
                s = await submit(
                    client,
                    AccessRequest(requester=email, instance="pg", role=role, duration=timedelta(seconds=3)),
                    "record",
                )
                await asyncio.sleep(0.5)
                await decide(client, s.id, "approve", dba)
                h = handle(client, s.id)
                await asyncio.sleep(0.5)
                await extend(client, s.id, me, timedelta(seconds=2))
                await asyncio.sleep(0.5)
                await decide(client, s.id, "approve_extension", dba)
                await h.result()
                (OUT / f"{VERSION}-extended.json").write_text((await h.fetch_history()).to_json())
                print("extended", (await get_status(client, s.id)).state.value)
        if NUMBER >= 5:
            async with worker():
                for name, glass in (("two_of_two", False), ("break_glass", True)):
                    s = await submit(
                        client,
                        AccessRequest(
                            requester=email, instance="pg", role=billing, duration=timedelta(seconds=2),
                            reason="INC-1", break_glass=glass,
                        ),
                        "record",
                    )  # fmt: skip
                    h = handle(client, s.id)
                    await asyncio.sleep(0.5)
                    if glass:
                        await asyncio.sleep(3)  # the review escalates, then it is reviewed
                        await decide(client, s.id, "review", dba)
                    else:
                        await decide(client, s.id, "approve", dba)
                        await asyncio.sleep(0.5)
                        await decide(client, s.id, "approve", Decision(actor="dba2@example.com"))
                    await h.result()
                    (OUT / f"{VERSION}-{name}.json").write_text((await h.fetch_history()).to_json())
                    print(name, (await get_status(client, s.id)).state.value)
        if NUMBER >= 4:
            await offline("two_decisions_one_task", 0, [("approve", "plain"), ("deny", "plain")])
            await offline("approved_with_the_timeout", 3, [("approve", "signed")])
            async with worker():
                s = await submit(
                    client,
                    AccessRequest(requester=email, instance="pg", role=role, duration=timedelta(seconds=2)),
                    "record",
                )
                await asyncio.sleep(0.5)
                await handle(client, s.id).signal("approve", signed(s.id, "approve"))
                await handle(client, s.id).result()
                h = handle(client, s.id)
                (OUT / f"{VERSION}-verified.json").write_text((await h.fetch_history()).to_json())
                print("verified", (await get_status(client, s.id)).state.value)
        async with worker():
            await scenario("relinquished", timedelta(hours=1), [("approve", dba), ("relinquish", me)])
            await scenario("expired", timedelta(seconds=2), [("approve", dba)])
            await scenario("denied", timedelta(hours=1), [("deny", dba)])
            await scenario("cancelled", timedelta(hours=1), [("cancel", me)])
            await scenario("timed_out", timedelta(hours=1), [])
    finally:
        await env.shutdown()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in (login, role, billing):
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


if __name__ == "__main__":
    asyncio.run(main())
