"""Slack rate limit under a burst: N requests to one approvers' channel at ~1 message/s.

Slack lets a bot post about one message per second per channel (chat.postMessage's special
tier, short bursts allowed) and answers 429 + Retry-After beyond it. N requests at once put
3N card messages (post, granted, expired) through one channel, minutes of draining. The
figure checks the two promises that must survive it: the lifecycle is not held back
(notifications run in a background chain in the workflow), and nothing is lost or reordered
(each request's card and DMs arrive, in lifecycle order).

Product: the fake Slack (its own process) throttles chat.postMessage / chat.update /
chat.postEphemeral per channel; N requests are submitted and approved through
`rolecall.operations`, with durations chosen to expire together. The watcher times each
GRANT (approve sent -> membership seen) and REVOKE (disappearance - the request's own
expires_at). Once every workflow has closed (their notification chains done or dropped),
the fake's successful calls give each request's message sequence, and the drain time
(first submit -> last message delivered). Floors: the drain's is arithmetic (the channel's
messages at exactly its rate); the timings' is the same N requests in the same run with the
fake not throttling, first, so that what throttling costs the lifecycle is the difference.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bench import product
from bench.common import APPROVER_EMAIL, CHANNEL, bounded, errors_of, ms, pct, ratio, say, secs
from bench.context import Bench
from bench.report import Row

RATE = 1.0  # messages per second per channel, as Slack's chat.postMessage tier
BURST = 3  # the short burst a channel is allowed before it is throttled
# Each request's messages, in the order its lifecycle sends them (the approval is told with
# the grant): (kind, stage) pairs, the card in the approvers' channel, the rest in the DM.
EXPECTED = [
    ("card", "requested"),
    ("request DM", "requested"),
    ("card", "granted"),
    ("request DM", "granted"),
    ("grant DM", "granted"),
    ("card", "expired"),
    ("request DM", "expired"),
    ("grant DM", "expired"),
    ("outcome DM", "expired"),
]
RANK = {"requested": 0, "granted": 1, "revoking": 2, "expired": 3}
_RID = re.compile(r"request `([^`]+)`")


@dataclass
class Burst:
    n: int
    grant: list[float] = field(default_factory=list)  # approve sent -> membership seen
    lateness: list[float] = field(default_factory=list)  # disappearance - expires_at
    spread: float = math.nan  # of the expires_at instants
    created_in: float = math.nan
    first_submit: float = math.nan  # time.time()
    closed: int = 0  # workflows closed before the drain deadline
    setup_errors: list[BaseException] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # the fake's, since the figure began
    dropped: list[str] = field(default_factory=list)  # the worker's "notification ... dropped" lines
    unseen: int = 0  # granted requests whose REVOKE (or expires_at) the bench did not see


@dataclass
class Delivery:
    """What the fake Slack saw for this figure's requests."""

    drain: float = math.nan  # first submit -> last message delivered
    card_messages: int = 0  # delivered to the approvers' channel
    card_span: float = math.nan  # first -> last card message delivered
    throttled: Counter[str] = field(default_factory=Counter)  # 429s answered, by method
    lost: Counter[str] = field(default_factory=Counter)  # expected (kind, stage) never delivered
    out_of_order: int = 0  # requests whose messages arrived out of lifecycle order
    duplicate_posts: int = 0
    unexpected: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # non-429 errors answered
    # Per message: its first attempt (429s included) -> its delivery; against the hour a
    # notification may take before the workflow drops it.
    waits: list[float] = field(default_factory=list)


def classify(call: dict[str, Any]) -> tuple[str, str]:
    """(kind, stage) of one delivered message, from what rolecall's messages say."""
    text, blocks = str(call.get("text") or ""), str(call.get("blocks") or "")
    if call.get("channel") == CHANNEL and not call.get("thread_ts"):
        if '"block_id": "decide"' in blocks:
            return "card", "requested"
        if "Granted until" in blocks:
            return "card", "granted"
        if "Revoking" in blocks:
            return "card", "revoking"
        return "card", "expired" if "expired and was revoked" in blocks else "other"
    if text.startswith("Your request for "):
        stage = text.rsplit(": ", 1)[-1] if ": " in text else ""
        if text.endswith("is waiting for approval"):
            stage = "requested"
        return "request DM", stage if stage in RANK else "other"
    if text.startswith("Access granted: "):
        return "grant DM", "granted"
    if text.startswith("Access to ") and text.endswith(" ended"):
        return "grant DM", "revoking" if "is being revoked" in blocks else "expired"
    if text == "Your access has expired":
        return "outcome DM", "expired"
    return "other", "other"


def request_of(call: dict[str, Any]) -> str | None:
    found = _RID.search(str(call.get("blocks") or ""))
    return found.group(1) if found else None


def deliveries(b: Burst, rids: set[str]) -> Delivery:
    """Per request: which expected messages arrived, and whether in lifecycle order."""
    out = Delivery()
    seen: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # rid -> (method, kind, stage)
    last = math.nan
    cards: list[float] = []
    first_try: dict[tuple[str, str, str], float] = {}
    for call in sorted(b.calls, key=lambda c: float(c["at"])):
        rid = request_of(call)
        if rid not in rids or call["method"] not in ("chat.postMessage", "chat.update"):
            continue
        first_try.setdefault((rid, *classify(call)), float(call["at"]))
        if call["status"] == 429:
            out.throttled[call["method"]] += 1
            continue
        if not call["ok"]:
            out.failed[f"{call['method']} {call['error']}"] += 1
            continue
        kind, stage = classify(call)
        seen[rid].append((call["method"], kind, stage))
        out.waits.append(float(call["at"]) - first_try.pop((rid, kind, stage), float(call["at"])))
        last = float(call["at"]) if math.isnan(last) else max(last, float(call["at"]))
        if kind == "card":
            cards.append(float(call["at"]))
    for rid in rids:
        got = seen.get(rid, [])
        pairs = {(k, s) for _, k, s in got}
        for kind, stage in EXPECTED:
            if (kind, stage) not in pairs:
                out.lost[f"{kind} {stage}"] += 1
        for kind, stage in pairs - set(EXPECTED):
            out.unexpected[f"{kind} {stage}"] += 1
        ranks = [RANK.get(s, -1) for _, _, s in got]
        if ranks != sorted(ranks):
            out.out_of_order += 1
        posts = Counter(k for m, k, _ in got if m == "chat.postMessage")
        out.duplicate_posts += sum(c - 1 for c in posts.values() if c > 1)
    out.drain = last - b.first_submit
    out.card_messages = len(cards)
    out.card_span = max(cards) - min(cards) if cards else math.nan
    return out


async def _create(b: Bench, role: str, expiry: float, out: Burst) -> list[Any]:
    """Submit and approve N requests at concurrency, each lasting until about `expiry`."""
    from rolecall import operations

    stack = b.stack
    leads: list[float] = []
    expires: dict[tuple[str, str], float] = {}
    out.first_submit = time.time()

    async def create(i: int) -> str:
        login = stack.logins[i]
        lead = statistics.median(leads[-50:]) if leads else 0.5
        t_sub = time.time()
        rid = await product.submit(stack, i, role, timedelta(seconds=max(1.0, expiry - t_sub - lead)))
        t_sig = time.time()
        await product.send_signal(stack, rid, "approve", APPROVER_EMAIL)
        seen = await b.watcher.wait((login, role), True, 180)
        leads.append(seen - t_sub)
        out.grant.append(seen - t_sig)
        # The GRANT commits before the workflow records expires_at: ask until it has.
        asked = time.monotonic()
        while time.monotonic() - asked < 60:
            status = await operations.get_status(stack.client, rid)
            if status.expires_at is not None:
                expires[(login, role)] = status.expires_at.timestamp()
                break
            await asyncio.sleep(0.05)
        return rid

    started = time.monotonic()
    rids = await bounded(b.counts.create_concurrency, list(range(out.n)), create)
    out.created_in = time.monotonic() - started
    out.setup_errors = errors_of(rids)
    out.spread = max(expires.values()) - min(expires.values()) if expires else math.nan
    deadline = time.monotonic() + max(0.0, max(expires.values(), default=0.0) - time.time()) + 120
    while b.watcher.members and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    out.lateness = [b.watcher.gone[pair] - exp for pair, exp in expires.items() if pair in b.watcher.gone]
    return [r for r in rids if isinstance(r, str)]


async def _drain(b: Bench, rids: list[str], seconds: float) -> int:
    """Wait (at most `seconds`) for every workflow to close; terminate the rest. Closed count."""
    handles = [b.stack.client.get_workflow_handle(rid) for rid in rids]
    tasks = [asyncio.ensure_future(h.result()) for h in handles]
    deadline = time.monotonic() + seconds
    pending: set[asyncio.Future[Any]] = set(tasks)
    while pending and time.monotonic() < deadline:
        _, pending = await asyncio.wait(pending, timeout=min(30.0, max(0.1, deadline - time.monotonic())))
        say(f"burst: {len(tasks) - len(pending)} of {len(tasks)} workflows closed")
    for task in pending:
        task.cancel()
    left = [h for h, t in zip(handles, tasks, strict=True) if t in pending]
    await bounded(16, left, lambda h: h.terminate("bench: burst figure's drain deadline passed"))
    return len(tasks) - len(left)


async def _product(b: Bench, name: str, limited: bool) -> tuple[Burst, set[str]]:
    """The N requests on role `name`, with the fake throttling the channels or not."""
    stack, n = b.stack, b.counts.burst
    role = stack.role(name)
    out = Burst(n=n)
    b.watcher.watch([role], interval=0.01)
    mark = int((await stack.fake_slack("calls", since=10**12))["count"])
    if limited:
        await stack.fake_slack("rate_limit", per_second=RATE, burst=BURST)
    try:
        create_rate = max(5.0, b.lifecycle_rate * 1.2)
        expiry = time.time() + 1.6 * n / create_rate + 20
        say(f"burst: {n} requests to {CHANNEL} " + (f"at {RATE:g} msg/s (burst {BURST})" if limited
            else "unthrottled") + f", to expire at +{expiry - time.time():.0f}s")  # fmt: skip
        rids = await _create(b, role, expiry, out)
        say(f"burst: {len(rids)} granted in {out.created_in:.1f}s and revoked; draining Slack")
        # A notification may take up to its schedule-to-close (an hour) before it is dropped.
        out.closed = await _drain(b, rids, 1.5 * (3 * n - BURST) / RATE + 660)
        dump = await stack.fake_slack("calls", since=mark, timeout=120)
    finally:
        if limited:
            await stack.fake_slack("rate_limit", per_second=None)
    out.calls = list(dump["calls"])
    out.unseen = len(rids) - len(out.lateness)
    if stack.worker is not None:
        out.dropped = [ln for ln in stack.worker.log_text().splitlines() if "dropped" in ln and role in ln]
    return out, set(rids)


def _why_dropped(lines: list[str]) -> str:
    events = Counter(ln.split("notification ", 1)[-1].split(" ", 1)[0] for ln in lines)
    causes = Counter(ln.rsplit(": ", 1)[-1][:80] for ln in lines)
    return f"{dict(events)}; causes {dict(causes.most_common(3))}"


def _timing(p: Burst) -> str:
    return (
        f"grant p50 {ms(pct(p.grant, 50))} / p99 {ms(pct(p.grant, 99))} / max "
        f"{ms(max(p.grant, default=math.nan))}; revoke lateness p50 {ms(pct(p.lateness, 50))} / p99 "
        f"{ms(pct(p.lateness, 99))} / max {ms(max(p.lateness, default=math.nan))}"
    )


def _rows(b: Bench, p: Burst, d: Delivery, base: Burst, base_d: Delivery) -> None:
    n = b.counts.burst
    floor = max(0, d.card_messages - BURST) / RATE
    lost = sum(d.lost.values())
    b.report.add(
        Row(
            f"Slack rate limit under a burst: {n} requests to one approvers' channel at "
            f"{RATE:g} msg/s/channel (burst {BURST}) (n={len(p.lateness)}/{n})",
            f"drain {secs(d.drain)} (first request -> last Slack message)",
            f"{sum(d.throttled.values())} 429s answered; {_timing(p)}; messages lost {lost}, "
            f"requests out of order {d.out_of_order}",
            "grants and revokes on time; no card or DM lost or out of order",
            f"{d.card_messages} card messages at exactly {RATE:g}/s after a burst of {BURST}: "
            f"{secs(floor)} (arithmetic); the same {n} unthrottled: drain {secs(base_d.drain)}, "
            f"{_timing(base)}",
            f"{ratio(d.drain, floor)} (p99 grant {ratio(pct(p.grant, 99), pct(base.grant, 99))}, "
            f"p99 lateness {ratio(pct(p.lateness, 99), pct(base.lateness, 99))} to unthrottled)",
        )
    )
    b.report.note(
        f"burst: {n} requests created in {p.created_in:.1f}s at concurrency "
        f"{b.counts.create_concurrency} (unthrottled {base.created_in:.1f}s); expires_at spread "
        f"{secs(p.spread)}; {p.closed} of {n} workflows closed before the drain deadline (the rest "
        f"terminated); revokes not seen {p.unseen} (unthrottled {base.unseen}); card messages took "
        f"{secs(d.card_span)} ({d.card_messages / d.card_span if d.card_span else math.nan:.2f}/s); "
        f"429s by method {dict(d.throttled)}; one message's wait, first attempt -> delivered: "
        f"p50 {secs(pct(d.waits, 50))}, p99 {secs(pct(d.waits, 99))}, max "
        f"{secs(max(d.waits, default=math.nan))} (a notification is dropped after 3600 s); "
        f"{len(p.setup_errors)} set-up errors" + (f" ({p.setup_errors[0]!r})" if p.setup_errors else "")
    )
    expected = len(EXPECTED) * n
    b.report.note(
        f"burst: {expected - lost} of {expected} expected messages delivered ({len(EXPECTED)} per "
        f"request: card post + 2 updates in {CHANNEL}; request DM post + 2 updates, grant DM post "
        f"+ update, outcome DM in the requester's DM); lost by kind {dict(d.lost) or 0}; "
        f"duplicate posts {d.duplicate_posts}; unexpected {dict(d.unexpected) or 0}; "
        f"other errors answered {dict(d.failed) or 0}; notifications dropped by the worker "
        f"{len(p.dropped)}"
        + (f" ({_why_dropped(p.dropped)})" if p.dropped else "")
        + f"; unthrottled: lost {sum(base_d.lost.values())}, out of order {base_d.out_of_order}"
    )


async def run(b: Bench) -> None:
    if not b.product:
        return  # no engine floor: the figure is the product's notification path itself
    base, base_rids = await _product(b, "burst0", limited=False)
    p, rids = await _product(b, "burst", limited=True)
    _rows(b, p, deliveries(p, rids), base, deliveries(base, base_rids))
