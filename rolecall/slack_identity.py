"""Who is acting in Slack: a full member of rolecall's own workspace, or a refusal saying why.

An email alone is not a person: a guest, a Slack Connect user from another company, a bot
or a deactivated account can all show one. `SlackIdentity.identify` is the one place that
turns a Slack user (and, from a request's payload, the workspace it came from) into an
`Identity` rolecall may act for; everything else gets a `Refusal` with one line that can be
shown as it is. The Slack app checks every listener with it, and the worker uses it for the
members of approver groups.

"Ours" is `SLACK_TEAM_ID` / `SLACK_ENTERPRISE_ID` when they are set, else what `auth.test`
says of the bot token (asked once). On Enterprise Grid every workspace of the organisation
counts as ours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger("rolecall.slack_identity")

USERS_TTL = 60.0
FULL_MEMBERS = "rolecall is for full members of this workspace"
NO_EMAIL = (
    "rolecall identifies people by their email address, and Slack does not show yours to this app. "
    "Ask a Slack admin to make profile emails visible (or check that the app has users:read.email)."
)
# Slack shows modal errors under one field: the same, short enough to read there.
NO_EMAIL_SHORT = (
    "Slack does not show your email to this app, and rolecall identifies people by email: "
    "ask a Slack admin to make profile emails visible."
)


class Ttl:
    """A small time-limited cache (Slack users, instances' role lists)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any:
        hit = self._items.get(key)
        if hit and time.monotonic() - hit[0] < self.seconds:
            return hit[1]
        return None

    def put(self, key: str, value: Any) -> None:
        self._items[key] = (time.monotonic(), value)


class RefusalKind(StrEnum):
    OTHER_WORKSPACE = "other_workspace"
    OTHER_ORGANISATION = "other_organisation"
    GUEST = "guest"
    SINGLE_CHANNEL_GUEST = "single_channel_guest"
    STRANGER = "stranger"
    OTHER_TEAM = "other_team"
    BOT = "bot"
    DEACTIVATED = "deactivated"
    NO_EMAIL = "no_email"
    UNKNOWN_USER = "unknown_user"
    UNAVAILABLE = "unavailable"  # Slack did not answer: worth trying again


@dataclass(frozen=True)
class Identity:
    """A full member of our workspace, as rolecall names them (by email)."""

    email: str
    user_id: str
    team_id: str
    name: str


@dataclass(frozen=True)
class Refusal:
    user_id: str
    kind: RefusalKind
    reason: str

    @property
    def short(self) -> str:
        """The reason, short enough for a modal's field error."""
        return NO_EMAIL_SHORT if self.kind is RefusalKind.NO_EMAIL else self.reason


@dataclass(frozen=True)
class Workspace:
    """Our workspace: its team ID and, on Enterprise Grid, its organisation's ID."""

    team_id: str
    enterprise_id: str | None = None


@dataclass(frozen=True)
class Origin:
    """Where a request says it came from: the workspace it happened in and the actor's team."""

    team_id: str | None = None
    user_team_id: str | None = None
    enterprise_id: str | None = None


def _str(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


def origin_of(body: dict[str, Any]) -> Origin:
    """The team and enterprise IDs a command, interaction or event payload carries."""
    team, user, enterprise = body.get("team"), body.get("user"), body.get("enterprise")
    team_id = _str(team.get("id")) if isinstance(team, dict) else _str(team)
    enterprise_id = _str(enterprise.get("id")) if isinstance(enterprise, dict) else _str(enterprise)
    if isinstance(team, dict):
        enterprise_id = enterprise_id or _str(team.get("enterprise_id"))
    return Origin(
        team_id=team_id or _str(body.get("team_id")),
        user_team_id=_str(user.get("team_id")) if isinstance(user, dict) else None,
        enterprise_id=enterprise_id or _str(body.get("enterprise_id")),
    )


def judge_origin(user_id: str, origin: Origin, ours: Workspace) -> Refusal | None:
    """A refusal when the payload is from another organisation or workspace (pure)."""
    same_org = ours.enterprise_id is not None and origin.enterprise_id == ours.enterprise_id
    if origin.enterprise_id and ours.enterprise_id and not same_org:
        return Refusal(
            user_id,
            RefusalKind.OTHER_ORGANISATION,
            f"this came from another Slack organisation ({origin.enterprise_id}): {FULL_MEMBERS}",
        )
    if same_org:
        return None
    teams = [t for t in (origin.team_id, origin.user_team_id) if t]
    if not teams:
        return Refusal(
            user_id, RefusalKind.OTHER_WORKSPACE, f"this request named no Slack workspace: {FULL_MEMBERS}"
        )
    for team in teams:
        if team != ours.team_id:
            return Refusal(
                user_id,
                RefusalKind.OTHER_WORKSPACE,
                f"this came from another Slack workspace ({team}): {FULL_MEMBERS}",
            )
    return None


def judge_user(user: dict[str, Any], ours: Workspace) -> Identity | Refusal:
    """What `users.info` says of someone: a full member of ours with an email, or why not (pure)."""
    uid = str(user.get("id") or "")

    def no(kind: RefusalKind, who: str) -> Refusal:
        return Refusal(uid, kind, f"{who} can't request or approve access: {FULL_MEMBERS}")

    if user.get("deleted"):
        return no(RefusalKind.DEACTIVATED, "deactivated accounts")
    if user.get("is_bot") or user.get("is_app_user") or uid == "USLACKBOT":
        return no(RefusalKind.BOT, "bots and apps")
    if user.get("is_ultra_restricted"):
        return no(RefusalKind.SINGLE_CHANNEL_GUEST, "single-channel guests")
    if user.get("is_restricted"):
        return no(RefusalKind.GUEST, "guests")
    if user.get("is_stranger"):
        return no(RefusalKind.STRANGER, "people from other organisations (Slack Connect)")
    team_id = str(user.get("team_id") or "")
    org = (user.get("enterprise_user") or {}).get("enterprise_id")
    if team_id != ours.team_id and not (ours.enterprise_id and org == ours.enterprise_id):
        return no(RefusalKind.OTHER_TEAM, "members of other workspaces")
    profile = user.get("profile") or {}
    email = str(profile.get("email") or "").strip().lower()
    if not email:
        return Refusal(uid, RefusalKind.NO_EMAIL, NO_EMAIL)
    name = str(user.get("real_name") or profile.get("real_name") or user.get("name") or uid)
    return Identity(email=email, user_id=uid, team_id=team_id, name=name)


_TRANSPORT = (SlackClientError, aiohttp.ClientError, TimeoutError, OSError)
_SILENT = {RefusalKind.NO_EMAIL}


class SlackIdentity:
    """`identify()` with its two caches: our workspace (for good) and users.info (a minute)."""

    def __init__(
        self,
        web: AsyncWebClient,
        team_id: str | None = None,
        enterprise_id: str | None = None,
        ttl: float = USERS_TTL,
    ) -> None:
        self._web = web
        self._team_id = team_id or None
        self._enterprise_id = enterprise_id or None
        self._ours: Workspace | None = None
        self._lock = asyncio.Lock()
        self._users = Ttl(ttl)

    async def workspace(self) -> Workspace:
        """Ours: the configured IDs, completed from auth.test (once) for any left unset.

        Raises the Slack client's error when auth.test cannot be had (not cached).
        """
        if self._ours is not None:
            return self._ours
        async with self._lock:
            if self._ours is None:
                team, enterprise = self._team_id, self._enterprise_id
                if team is None or enterprise is None:
                    resp = await self._web.auth_test()
                    team = team or _str(resp.get("team_id"))
                    enterprise = enterprise or _str(resp.get("enterprise_id"))
                    if team is None:
                        raise SlackClientError("auth.test named no team")
                self._ours = Workspace(team, enterprise)
                log.info("Slack workspace %s%s", team, f", organisation {enterprise}" if enterprise else "")
            return self._ours

    async def identify(self, user_id: str, origin: Origin | None = None) -> Identity | Refusal:
        """The one Slack user -> identity lookup; each refusal is logged here, once."""
        verdict = await self._identify(user_id, origin)
        if isinstance(verdict, Refusal):
            level = logging.INFO if verdict.kind in _SILENT else logging.WARNING
            log.log(level, "Slack user %s refused (%s): %s", user_id, verdict.kind.value, verdict.reason)
        return verdict

    async def _identify(self, user_id: str, origin: Origin | None) -> Identity | Refusal:
        try:
            ours = await self.workspace()
        except _TRANSPORT as e:
            return _unavailable(user_id, "which workspace it is installed in", e)
        if origin is not None:
            refused = judge_origin(user_id, origin, ours)
            if refused is not None:
                return refused
        user = self._users.get(user_id)
        if user is None:
            try:
                resp = await self._web.users_info(user=user_id)
            except SlackApiError as e:
                error = e.response.get("error") if e.response is not None else None
                if error in ("user_not_found", "user_not_visible"):
                    return Refusal(
                        user_id,
                        RefusalKind.UNKNOWN_USER,
                        f"Slack does not show this app who you are ({error})",
                    )
                return _unavailable(user_id, "who you are", e)
            except _TRANSPORT as e:
                return _unavailable(user_id, "who you are", e)
            user = dict(resp.get("user") or {})
            self._users.put(user_id, user)
        return judge_user(user, ours)


def _unavailable(user_id: str, what: str, e: BaseException) -> Refusal:
    detail = e.response.get("error") if isinstance(e, SlackApiError) and e.response is not None else None
    return Refusal(
        user_id,
        RefusalKind.UNAVAILABLE,
        f"Slack did not tell rolecall {what} ({detail or type(e).__name__}); try again in a moment",
    )
