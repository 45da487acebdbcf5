"""Slack as the workflow's voice: post and update messages, look up approver groups.

`SlackNotifier` implements the `Notifier` protocol for `NotifyActivities`: it posts the
approvers' message and the requester's DMs, and updates them in place later using the
`MessageRef`s it returned before (keys "approval", "requester", "grant", "alert"). Slack's
429 answers are retried in the client after Retry-After; anything else raises so that
Temporal retries the activity. The workflow never waits for these before a grant or revoke.
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.notify import describe
from rolecall import slack_blocks as kit
from rolecall.models import (
    ApproverGroups,
    Approvers,
    GroupCheck,
    GroupMembership,
    MessageRef,
    Notification,
    NotifyResult,
    ReconcileReport,
    RequestState,
    RequestStatus,
)
from rolecall.slack_client import web_client
from rolecall.slack_identity import Identity, RefusalKind, SlackIdentity

log = logging.getLogger("rolecall.slack")

__all__ = ["FINAL_EVENTS", "SlackActivities", "SlackNotifier", "web_client"]

FINAL_EVENTS = ("denied", "timed_out", "cancelled", "failed", "expired", "relinquished", "rejected")


class SlackNotifier:
    """Posts and updates rolecall's messages; idempotent across activity retries."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._dm: dict[str, str] = {}  # user ID -> DM channel ID: stable, so opened once

    async def send(self, note: Notification) -> NotifyResult:
        token = _UPDATED.set(_recorded_updates())
        try:
            return await self._send(note)
        finally:
            _UPDATED.reset(token)

    async def _send(self, note: Notification) -> NotifyResult:
        refs = dict(note.messages)
        refs.update(_recorded_refs())
        s = note.status
        ev = note.event
        try:
            if ev == "requested":
                await self._approval(s, refs, post=True)
                await self._requester(s, refs, post=True)
            elif ev == "approved":
                await self._approval(s, refs, post=s.auto_approved)
                await self._requester(s, refs, post=s.auto_approved)
            elif ev == "granted":
                await self._approval(s, refs, post=False)
                await self._requester(s, refs, post=False)
                await self._put(refs, "grant", await self._dm_channel(s), *kit.grant_message(s))
            elif ev in ("approval_progress", "reviewed"):
                await self._approval(s, refs, post=False)
            elif ev == "privileges_changed":
                await self._approval(s, refs, post=True)
                await self._requester(s, refs, post=False)
                await self._held(s, refs, note.detail)
            elif ev == "break_glass":
                await self._approval(s, refs, post=True)
                await self._requester(s, refs, post=True)
            elif ev == "review_overdue":
                await self._approval(s, refs, post=False)
                await self._review_overdue(s, refs)
            elif ev == "expiring":
                channel = await self._dm_channel(s)
                text, blocks = kit.expiry_warning(s, datetime.now(UTC))
                await self._put(
                    refs,
                    f"expiring_{int(s.expires_at.timestamp()) if s.expires_at else 0}",
                    channel,
                    text,
                    blocks,
                )
            elif ev in ("extension_requested", "extended", "extension_denied"):
                await self._extension(s, refs, ev)
            elif ev == "reminder":
                await self._reminder(s, refs, note.detail)
            elif ev == "escalated":
                await self._escalated(s, refs, note.detail)
            elif ev == "refused":
                if note.recipient:
                    channel = await self._dm_user(note.recipient)
                    text, blocks = kit.refused_dm(s, note.detail)
                    await self._client.chat_postMessage(channel=channel, text=text, blocks=blocks)
            elif ev == "revoke_failing":
                if s.approver_channel:
                    await self._put(refs, "alert", s.approver_channel, *kit.revoke_alert(s, note.detail))
            elif ev in FINAL_EVENTS:
                await self._approval(s, refs, post=False)
                await self._requester(s, refs, post=False)
                if "grant" in refs:
                    await self._put(refs, "grant", refs["grant"].channel, *kit.grant_message(s))
                # The Slack app answers a refused submission itself, in the modal or a DM.
                skip = ev == "cancelled" or (ev == "rejected" and s.source == "slack")
                outcome = kit.outcome_dm(s, ev)
                if outcome and not skip:
                    await self._put(refs, f"outcome_{ev}", await self._dm_channel(s), *outcome)
        except SlackApiError as e:
            if e.response is not None and e.response.status_code == 429:
                raise _rate_limited(e, note) from e
            error = str(e.response.get("error", "")) if e.response is not None else ""
            if error in ("channel_not_found", "not_in_channel", "users_not_found", "user_not_found"):
                # Retrying cannot fix a wrong channel or an unknown user: log it and move on.
                log.warning("slack: %s for %s (%s)", error, s.id, describe(note))
                return NotifyResult(messages=refs)
            raise
        return NotifyResult(messages=refs)

    async def _extension(self, s: RequestStatus, refs: dict[str, MessageRef], ev: str) -> None:
        """The ask lives in the approvers' thread, updated in place; the grant DM shows the expiry."""
        key = f"extension_{len(s.extensions)}"
        card = refs.get("approval")
        text, blocks = kit.extension_message(s)
        if key in refs:
            await self._put(refs, key, refs[key].channel, text, blocks)
        elif card is not None:
            resp = await self._client.chat_postMessage(
                channel=card.channel, thread_ts=card.ts, text=text, blocks=blocks
            )
            refs[key] = MessageRef(channel=str(resp["channel"]), ts=str(resp["ts"]))
            _record_refs(refs)
        if ev != "extension_requested":
            await self._approval(s, refs, post=False)
            if "grant" in refs:
                await self._put(refs, "grant", refs["grant"].channel, *kit.grant_message(s))
        if ev == "extension_denied":
            await self._put(refs, key + "_dm", await self._dm_channel(s), text, blocks)

    async def _mentions(self, emails: list[str]) -> list[str]:
        out = []
        for email in emails:
            try:
                found = await self._client.users_lookupByEmail(email=email)
            except SlackApiError:
                continue
            out.append(f"<@{found['user']['id']}>")
        return out

    async def _reminder(self, s: RequestStatus, refs: dict[str, MessageRef], waited: str) -> None:
        card = refs.get("approval")
        if card is None:
            return
        key = f"reminder_{s.reminded}"
        if key not in refs:
            text, blocks = kit.reminder(s, await self._mentions(s.approvers), waited)
            resp = await self._client.chat_postMessage(
                channel=card.channel, thread_ts=card.ts, text=text, blocks=blocks
            )
            refs[key] = MessageRef(channel=str(resp["channel"]), ts=str(resp["ts"]))
            _record_refs(refs)

    async def _escalated(self, s: RequestStatus, refs: dict[str, MessageRef], targets: str) -> None:
        """The request, with working buttons, where escalate_to says: channels, people, groups."""
        granted = s.state == RequestState.GRANTED
        text, blocks = kit.extension_message(s) if granted else kit.approver_message(s)
        for target in (t.strip() for t in targets.split(",") if t.strip()):
            key = f"escalated_{target}"
            if key in refs:
                continue
            if "@" in target:
                found = await self._client.users_lookupByEmail(email=target)
                channel = await self._dm_user(str(found["user"]["id"]))
            elif target.startswith("S"):
                members = await self._client.usergroups_users_list(usergroup=target)
                users: list[str] = list(members.get("users", []))
                for user in users:
                    await self._put(refs, f"{key}_{user}", await self._dm_user(str(user)), text, blocks)
                refs[key] = MessageRef(channel=target, ts="")
                continue
            else:
                channel = target
            await self._put(refs, key, channel, f"Escalated: {text}", blocks)

    async def _review_overdue(self, s: RequestStatus, refs: dict[str, MessageRef]) -> None:
        """A reply in the alert's thread mentioning the approvers, and a DM to each of them."""
        text, blocks = kit.review_reminder(s)
        mentions = []
        for email in s.approvers:
            try:
                found = await self._client.users_lookupByEmail(email=email)
            except SlackApiError:
                continue
            user = str(found["user"]["id"])
            mentions.append(f"<@{user}>")
            if f"overdue_{user}" not in refs:
                await self._put(refs, f"overdue_{user}", await self._dm_user(user), text, blocks)
        card = refs.get("approval")
        if card is not None and "overdue_thread" not in refs:
            reply = f"{' '.join(mentions)} {text}".strip()
            resp = await self._client.chat_postMessage(
                channel=card.channel, thread_ts=card.ts, text=reply, blocks=[kit.section(kit.escape(reply))]
            )
            refs["overdue_thread"] = MessageRef(channel=str(resp["channel"]), ts=str(resp["ts"]))
            _record_refs(refs)

    async def _held(self, s: RequestStatus, refs: dict[str, MessageRef], detail: str) -> None:
        """A reply under the card saying what the role gained; once per hold (retries skip it)."""
        card = refs.get("approval")
        key = f"held_{sum(1 for w in s.warnings if w.startswith('grant held: '))}"
        if card is None or key in refs:
            return
        text, blocks = kit.privileges_changed_message(s, detail)
        resp = await self._client.chat_postMessage(
            channel=card.channel, thread_ts=card.ts, text=text, blocks=blocks, reply_broadcast=True
        )
        refs[key] = MessageRef(channel=str(resp["channel"]), ts=str(resp["ts"]))
        _record_refs(refs)

    async def _approval(self, s: RequestStatus, refs: dict[str, MessageRef], post: bool) -> None:
        if "approval" in refs:
            await self._put(refs, "approval", refs["approval"].channel, *kit.approver_message(s))
        elif post and s.approver_channel:
            await self._put(refs, "approval", s.approver_channel, *kit.approver_message(s))

    async def _requester(self, s: RequestStatus, refs: dict[str, MessageRef], post: bool) -> None:
        if "requester" in refs:
            await self._put(refs, "requester", refs["requester"].channel, *kit.requester_message(s))
        elif post:
            await self._put(refs, "requester", await self._dm_channel(s), *kit.requester_message(s))

    async def _put(
        self, refs: dict[str, MessageRef], key: str, channel: str, text: str, blocks: list[kit.Block]
    ) -> None:
        """Update the message under `key` in place, or post it and remember where."""
        ref = refs.get(key)
        if ref is not None:
            done = _UPDATED.get()
            if done is not None and key in done:
                return  # an earlier attempt of this notification made this very update
            await self._client.chat_update(channel=ref.channel, ts=ref.ts, text=text, blocks=blocks)
            if done is not None:
                done.add(key)
                _record_refs(refs)
            return
        resp = await self._client.chat_postMessage(channel=channel, text=text, blocks=blocks)
        refs[key] = MessageRef(channel=str(resp["channel"]), ts=str(resp["ts"]))
        _record_refs(refs)

    async def report(self, report: ReconcileReport) -> None:
        """The reconciler's findings, posted to the instance's approvers' channel."""
        if not report.channel:
            log.warning("%s (no slack_channel configured for %s)", report.summary(), report.instance)
            return
        text, blocks = kit.reconcile_message(report)
        await self._client.chat_postMessage(channel=report.channel, text=text, blocks=blocks)

    async def _dm_channel(self, s: RequestStatus) -> str:
        user = s.slack_user_id
        if not user:
            found = await self._client.users_lookupByEmail(email=s.requester)
            user = str(found["user"]["id"])
        return await self._dm_user(user)

    async def _dm_user(self, user: str) -> str:
        if user not in self._dm:
            resp = await self._client.conversations_open(users=user)
            self._dm[user] = str(resp["channel"]["id"])
        return self._dm[user]


def _rate_limited(e: SlackApiError, note: Notification) -> ApplicationError:
    """Retry when Slack says, from Temporal, rather than waiting in this activity.

    A notification sleeping on Retry-After would hold one of the worker's activity slots, and
    a burst of them could make a GRANT or a REVOKE wait for a slot. Failing at once frees the
    slot; the retry starts from the messages this attempt already posted (its heartbeat), so
    nothing is posted twice. The jitter spreads the requests waiting on one channel.
    """
    try:
        after = float(e.response.headers.get("Retry-After", 1))
    except (TypeError, ValueError):
        after = 1.0
    delay = timedelta(seconds=after + random.uniform(0, max(after, 1.0)))
    return ApplicationError(
        f"Slack rate limit for {describe(note)}: retrying in {delay.total_seconds():.1f}s",
        type="SlackRateLimited",
        next_retry_delay=delay,
    )


# The message updates this notification has made, across its attempts (from its heartbeat):
# a retry after a 429 goes on from where the attempt stopped instead of making the same
# updates again, which on a busy channel would meet the limit again, attempt after attempt.
_UPDATED: ContextVar[set[str] | None] = ContextVar("rolecall_slack_updated", default=None)


def _recorded_details() -> list[Any]:
    if not activity.in_activity():
        return []
    return list(activity.info().heartbeat_details or [])


def _recorded_refs() -> dict[str, MessageRef]:
    """Messages an earlier attempt of this activity already posted (from its heartbeat)."""
    details = _recorded_details()
    first = details[0] if details else None
    if not isinstance(first, dict):
        return {}
    return {k: MessageRef.model_validate(v) for k, v in first.items()}


def _recorded_updates() -> set[str]:
    details = _recorded_details()
    second = details[1] if len(details) > 1 else None
    return {str(k) for k in second} if isinstance(second, list) else set()


def _record_refs(refs: dict[str, MessageRef]) -> None:
    if activity.in_activity():
        activity.heartbeat({k: v.model_dump() for k, v in refs.items()}, sorted(_UPDATED.get() or ()))


class SlackActivities:
    def __init__(self, client: AsyncWebClient, identity: SlackIdentity | None = None) -> None:
        self._client = client
        self._identity = identity or SlackIdentity(client)

    @activity.defn(name="expand_approver_groups")
    async def expand_approver_groups(self, inp: ApproverGroups) -> Approvers:
        """Emails of the groups' full members (IDs such as S0123ABCD).

        A member rolecall would not act for in Slack (a guest, a bot, someone of another
        organisation, no visible email) is left out and named in the detail.
        """
        emails: set[str] = set()
        missing: list[str] = []
        limit = asyncio.Semaphore(20)  # users.info in parallel: a 200-member group in well under 1 s

        async def one(user_id: str) -> None:
            async with limit:
                verdict = await self._identity.identify(user_id)
            if isinstance(verdict, Identity):
                emails.add(verdict.email)
            elif verdict.kind is RefusalKind.UNAVAILABLE:
                raise ApplicationError(verdict.reason, type="SlackUnavailable")  # retried
            else:
                missing.append(f"{user_id} ({verdict.kind.value.replace('_', ' ')})")

        for group in inp.groups:
            await asyncio.gather(*(one(str(u)) for u in await self._members(group)))
        detail = f"members left out: {', '.join(sorted(missing))}" if missing else ""
        return Approvers(emails=sorted(emails), detail=detail)

    async def _members(self, group: str) -> list[str]:
        try:
            resp = await self._client.usergroups_users_list(usergroup=group)
        except SlackApiError as e:
            error = e.response.get("error") if e.response is not None else None
            if error in ("no_such_subteam", "subteam_not_found", "invalid_usergroup"):
                raise ApplicationError(
                    f"Slack user group {group!r} does not exist", type="ConfigError", non_retryable=True
                ) from e
            raise
        return [str(u) for u in resp.get("users") or []]

    @activity.defn(name="still_in_groups")
    async def still_in_groups(self, inp: GroupCheck) -> GroupMembership:
        """At decision time: is this approver (who came from a group) still in one of them?

        The groups' member lists are read afresh (one call per group); who each member is comes
        from the identity cache (a minute).
        """
        for group in inp.groups:
            for user_id in await self._members(group):
                verdict = await self._identity.identify(user_id)
                if isinstance(verdict, Identity) and verdict.email == inp.email.lower():
                    return GroupMembership(member=True, detail=group)
        return GroupMembership(member=False, detail=", ".join(inp.groups))
