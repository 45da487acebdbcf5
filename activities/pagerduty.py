"""On-call check for auto-approval. The only module that may import pdpyras.

pdpyras is deprecated upstream for the `pagerduty` package (`APISession` -> `RestApiV2Client`,
`PDClientError` -> `Error`, `PDHTTPError` -> `HttpError`); everything that knows about the
client library lives in this file, so switching is a one-file change.

The check never raises, never denies and never approves on a failure: whatever goes wrong
(no token, 401, 5xx, rate limit, time-out, an unexpected answer) becomes
`OnCallResult(on_call=False, checked=False, detail="PagerDuty on-call check could not be done: ...")`
and the request waits for a human, with that sentence shown to the approvers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from temporalio import activity

from rolecall.config import Config, ConfigStore, PagerDuty
from rolecall.models import OnCallCheck, OnCallResult

with warnings.catch_warnings():
    # Known and documented above: do not print it at every worker start.
    warnings.filterwarnings("ignore", message='The package "pdpyras" is deprecated')
    import pdpyras

log = logging.getLogger(__name__)

FAILED = "PagerDuty on-call check could not be done: "
# Leave the activity this much of its start-to-close timeout to report a time-out itself.
_ACTIVITY_MARGIN = 2.0
_MIN_BUDGET = 0.5
_NAME_LIMIT = 80
_SPACES = re.compile(r"\s+")


class CheckFailed(Exception):
    """A reason fit for the approvers' message (never contains the token)."""


@dataclass(frozen=True)
class Duties:
    """Which on-call duties count; an empty tuple means "any" (both empty: config's any_duty)."""

    schedule_ids: tuple[str, ...]
    escalation_policy_ids: tuple[str, ...]
    max_escalation_level: int


def duties_for(config: Config, instance: str) -> Duties:
    """The instance's schedule/escalation policy IDs if it names any, else the [pagerduty] ones."""
    pd = config.pagerduty
    inst = config.instances.get(instance)
    schedules, policies = inst.pagerduty_duties(pd) if inst else (pd.schedule_ids, pd.escalation_policy_ids)
    return Duties(tuple(schedules), tuple(policies), pd.max_escalation_level)


class PagerDutyActivities:
    def __init__(self, config: ConfigStore) -> None:
        self._config = config

    @activity.defn(name="check_oncall")
    async def check_oncall(self, inp: OnCallCheck) -> OnCallResult:
        """Never raises: any failure means "ask a human", never "deny" or "approve"."""
        try:
            config = self._config.get()
            pd = config.pagerduty
            if not pd.enabled:
                return OnCallResult(on_call=False, checked=False, detail="")
            budget = _budget(pd)
            token = os.environ.get(pd.token_env, "").strip()
            if not token:
                raise CheckFailed(f"environment variable {pd.token_env} (the PagerDuty API token) is not set")
            duties = duties_for(config, inp.instance)
            if inp.max_escalation_level is not None:  # the request's rule sets its own level
                duties = replace(duties, max_escalation_level=inp.max_escalation_level)
            try:
                result = await asyncio.wait_for(
                    asyncio.to_thread(_check, pd.url, token, budget, inp.requester.lower(), duties),
                    timeout=budget,
                )
            except TimeoutError:
                raise CheckFailed(f"PagerDuty did not answer within {budget:g}s") from None
        except CheckFailed as e:
            log.warning("on-call check for %s on %s not done: %s", inp.requester, inp.instance, e)
            return OnCallResult(on_call=False, checked=False, detail=FAILED + str(e))
        except Exception as e:
            log.exception("on-call check for %s on %s failed", inp.requester, inp.instance)
            return OnCallResult(on_call=False, checked=False, detail=FAILED + _unexpected(e))
        log.info(
            "on-call check for %s on %s: %s", inp.requester, inp.instance, result.detail or "not on call"
        )
        return result


def _budget(pd: PagerDuty) -> float:
    """The configured time-out, kept inside the activity's own start-to-close timeout."""
    budget = pd.timeout
    if activity.in_activity():
        limit = activity.info().start_to_close_timeout
        if limit is not None:
            budget = min(budget, limit.total_seconds() - _ACTIVITY_MARGIN)
    return max(budget, _MIN_BUDGET)


def _check(url: str, token: str, budget: float, email: str, duties: Duties) -> OnCallResult:
    """Blocking: runs in a thread. Raises CheckFailed with a reason for any failure."""
    session = pdpyras.APISession(token)
    session.url = url
    session.timeout = budget  # per HTTP request; the caller bounds the whole check
    # No retries inside the budget (the fallback is a human), except one short wait on 429.
    session.max_network_attempts = 0
    session.retry[429] = 1
    session.sleep_timer = 0.25  # first 429 wait: 0.25 * sleep_timer_base (2) = 0.5 s
    try:
        user = session.find("users", email, attribute="email")
        if user is None:
            log.info("no PagerDuty user has the email %s", email)
            return OnCallResult(on_call=False, checked=True, detail="")
        user_id = str(user["id"])
        params: dict[str, Any] = {"user_ids": [user_id], "earliest": "true"}
        if duties.schedule_ids:
            params["schedule_ids"] = list(duties.schedule_ids)
        if duties.escalation_policy_ids:
            params["escalation_policy_ids"] = list(duties.escalation_policy_ids)
        entries = session.list_all("oncalls", params=params)
    except pdpyras.PDClientError as e:
        raise CheckFailed(_describe(e, url, budget)) from e
    except pdpyras.URLError as e:
        raise CheckFailed(f"bad PagerDuty URL {url!r}: {e}") from e
    finally:
        session.close()
    return _decide(email, user_id, entries, duties)


def _decide(email: str, user_id: str, entries: list[dict[str, Any]], duties: Duties) -> OnCallResult:
    """The nearest on-call entry that counts, re-checking the filters the API was given."""
    counted: list[tuple[int, dict[str, Any]]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise CheckFailed("PagerDuty answered GET /oncalls with an unexpected entry")
        level = entry.get("escalation_level")
        if not isinstance(level, int) or isinstance(level, bool):
            raise CheckFailed("PagerDuty answered GET /oncalls without an escalation level")
        if _ref_id(entry.get("user")) != user_id:
            continue
        if level < 1 or level > duties.max_escalation_level:
            continue
        if duties.schedule_ids and _ref_id(entry.get("schedule")) not in duties.schedule_ids:
            continue
        if (
            duties.escalation_policy_ids
            and _ref_id(entry.get("escalation_policy")) not in duties.escalation_policy_ids
        ):
            continue
        counted.append((level, entry))
    if not counted:
        return OnCallResult(on_call=False, checked=True, detail="")
    level, entry = min(counted, key=lambda item: item[0])
    where = [
        f"{kind} {_name(entry.get(key))}"
        for kind, key in (("schedule", "schedule"), ("escalation policy", "escalation_policy"))
        if isinstance(entry.get(key), dict)
    ]
    return OnCallResult(
        on_call=True, checked=True, detail=f"{email} is on call ({', '.join([*where, f'level {level}'])})"
    )


def _ref_id(ref: Any) -> str | None:
    return str(ref["id"]) if isinstance(ref, dict) and "id" in ref else None


def _name(ref: Any) -> str:
    """A reference's display name, tidied: it is shown verbatim to approvers."""
    name = ref.get("summary") or ref.get("name") or ref.get("id") or "?"
    name = _SPACES.sub(" ", "".join(c for c in str(name) if c.isprintable() or c.isspace())).strip()
    if len(name) > _NAME_LIMIT:
        name = name[: _NAME_LIMIT - 1] + "…"
    return name


def _describe(e: Exception, url: str, budget: float) -> str:
    """One line saying what went wrong, from a pdpyras error."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and status:
        where = _endpoint(response)
        if status == 401:
            return f"PagerDuty refused the API token (401 Unauthorized on {where})"
        if status == 403:
            return f"the API token may not read users or on-calls (403 Forbidden on {where})"
        if status == 429:
            return f"PagerDuty is rate-limiting rolecall (429 Too Many Requests on {where})"
        if 200 <= status < 300:
            return f"PagerDuty answered {where} with something that is not the expected JSON"
        reason = getattr(response, "reason", "") or ""
        return f"PagerDuty answered {status} {reason}".rstrip() + f" to {where}"
    cause = e.__cause__
    if cause is not None:
        names = {k.__name__ for k in type(cause).__mro__}
        if "Timeout" in names:
            return f"PagerDuty did not answer within {budget:g}s"
        if "ConnectionError" in names:
            return f"could not connect to PagerDuty at {url}"
        return f"network error talking to PagerDuty at {url} ({type(cause).__name__})"
    return _unexpected(e)


def _endpoint(response: Any) -> str:
    request = getattr(response, "request", None)
    method = getattr(request, "method", None) or "GET"
    path = urlsplit(getattr(request, "url", None) or "").path or "?"
    return f"{method} {path}"


def _unexpected(e: Exception) -> str:
    text = _SPACES.sub(" ", str(e)).strip()
    if len(text) > 200:
        text = text[:199] + "…"
    return (
        f"unexpected error ({type(e).__name__}: {text})" if text else f"unexpected error ({type(e).__name__})"
    )
