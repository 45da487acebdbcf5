"""Policy (a TOML file) and deployment settings (the environment), validated up front.

`load()` raises `ConfigError` naming the file, the key and what is wrong, so every
entry point (worker, Slack app, CLI) can refuse to start before it touches anything.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from rolecall.durations import parse_duration
from rolecall.errors import ConfigError, RequesterNotAllowed, UnknownInstance
from rolecall.models import AppliedRule, Target
from rolecall.roles import matches

log = logging.getLogger(__name__)
DEFAULT_CONFIG = "rolecall.toml"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
# How long a stopping worker lets its in-flight grants and revokes finish before it cancels
# them (they are then retried elsewhere). Keep the orchestrator's kill timeout above it.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)
_SLACK_ID = re.compile(r"^[TE][A-Z0-9]{2,31}$")


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("write durations as text, e.g. '15m' or '8h'")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _duration_or_off(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("0", "0s", "0m", "off"):
        return timedelta(0)
    return _duration(value)


# A duration where "0s" (or "off") turns the feature off.
DurationOrOff = Annotated[timedelta, BeforeValidator(_duration_or_off)]
ExtendApproval = Literal["approver", "auto"]
_PAGERDUTY_ID = re.compile(r"^[A-Za-z0-9]{2,64}$")


def _pagerduty_ids(value: list[str] | None) -> list[str] | None:
    """PagerDuty object IDs (e.g. PABC123): a typo would silently match nothing, so refuse it."""
    for item in value or []:
        if not _PAGERDUTY_ID.match(item):
            raise ValueError(f"{item!r} is not a PagerDuty ID (letters and digits, e.g. 'PABC123')")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


AutoApprove = Literal["never", "on_call", "always"]


class _RuleKeys(_Strict):
    """Keys an instance sets for all its roles and a rule may set again for some of them."""

    approvals_required: int | None = Field(default=None, ge=1, le=10)
    auto_approve: AutoApprove | None = None  # None: "on_call" when [pagerduty] is enabled
    on_call_max_escalation_level: int | None = Field(default=None, ge=1)
    auto_approve_max: Duration | None = None  # None: [pagerduty] auto_approve_max
    require_reason: bool | None = None
    reason_pattern: str | None = None
    break_glass: bool | None = None
    break_glass_max: Duration | None = None
    review_within: Duration | None = None
    # Day two: warn before expiry, extend, remind and escalate pending requests.
    expiry_warning: DurationOrOff | None = None  # default 10m; "0s" turns it off
    extend_approval: ExtendApproval | None = None  # default "approver"
    max_total_duration: Duration | None = None  # default max_duration, from the first grant
    max_extensions: int | None = Field(default=None, ge=0, le=100)  # default 3
    remind_approvers_after: DurationOrOff | None = None  # default off
    remind_every: Duration | None = None  # default remind_approvers_after
    escalate_after: DurationOrOff | None = None  # default off
    escalate_to: list[str] | None = None  # channels (#name, C...), emails, user groups (S...)

    @field_validator("escalate_to")
    @classmethod
    def _escalation_targets(cls, value: list[str] | None) -> list[str] | None:
        for target in value or []:
            if not (
                target.startswith("#") or _EMAIL.match(target) or re.match(r"^[CGS][A-Z0-9]{2,}$", target)
            ):
                raise ValueError(
                    f"{target!r} is not a channel (#name or C...), an email or a user group (S...)"
                )
        return value

    @field_validator("reason_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"{value!r} is not a valid regular expression ({e})") from None
        return value


class Rule(_RuleKeys):
    """Who approves which of an instance's roles, and how; the first rule whose roles match wins.

    Every key left out is the instance's.
    """

    name: str = Field(min_length=1, max_length=60)
    roles: list[str] = Field(min_length=1)
    approvers: list[str] | None = None
    approver_groups: list[str] | None = None
    allow_self_approval: bool | None = None
    default_duration: Duration | None = None
    max_duration: Duration | None = None
    approval_timeout: Duration | None = None
    terminate_sessions: bool | None = None

    @field_validator("approvers")
    @classmethod
    def _emails(cls, value: list[str] | None) -> list[str] | None:
        for email in value or []:
            if not _EMAIL.match(email):
                raise ValueError(f"{email!r} is not an email address")
        return [e.lower() for e in value] if value is not None else None

    def matches(self, role: str) -> bool:
        return any(matches(pattern, role) for pattern in self.roles)


class Instance(_RuleKeys):
    """One PostgreSQL server (and database) whose roles can be lent."""

    name: str = ""
    dsn_env: str = Field(description="environment variable holding the admin DSN")
    roles: list[str] = Field(min_length=1, description="requestable roles: names or globs")
    approvers: list[str] = []
    approver_groups: list[str] = []
    slack_channel: str | None = None
    default_duration: Duration = timedelta(hours=1)
    max_duration: Duration = timedelta(hours=8)
    approval_timeout: Duration = timedelta(hours=24)
    grant_timeout: Duration = timedelta(minutes=5)
    allow_self_approval: bool = False
    # False: only decisions made in Slack, signed by the Slack app and verified by the worker,
    # count; the CLI (and anyone with Temporal access) can no longer approve, deny, cancel or
    # relinquish here. See docs/security.md.
    accept_unverified_decisions: bool = True
    terminate_sessions: bool = True
    revoke_alert_after: int = Field(default=5, ge=1)
    login_template: str = "{local}"
    logins: dict[str, str] = {}
    unsafe_allowed: list[str] = []
    connect_timeout: int = Field(default=5, ge=1, le=60)
    # Manners on a production primary: a statement that waits on a lock gives up (and is
    # retried) instead of queueing behind it, and no worker opens more than this many
    # connections to the instance at once.
    lock_timeout: Duration = timedelta(seconds=5)
    statement_timeout: Duration = timedelta(seconds=30)
    max_connections: int = Field(default=5, ge=1, le=100)
    # GRANT ... GRANTED BY this role, so rolecall's grants stand apart from everyone else's
    # even when the admin login is a superuser (docs/security.md). None: the login itself.
    grantor: str | None = None
    # Requesters' email domains; empty means any. Checked before a request starts.
    allowed_email_domains: list[str] = []
    # PagerDuty duties that count as on call for this instance. Setting either replaces the
    # [pagerduty] defaults as a pair (the one left out is empty); leaving both out keeps them.
    # Both empty would be any duty at all: refused unless [pagerduty] any_duty = true.
    pagerduty_schedule_ids: list[str] | None = None
    pagerduty_escalation_policy_ids: list[str] | None = None
    # Per-role rules, matched in order; see rolecall.example.toml.
    rules: list[Rule] = []

    _check_pagerduty_ids = field_validator("pagerduty_schedule_ids", "pagerduty_escalation_policy_ids")(
        _pagerduty_ids
    )

    @field_validator("approvers")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for email in value:
            if not _EMAIL.match(email):
                raise ValueError(f"{email!r} is not an email address")
        return [e.lower() for e in value]

    @field_validator("allowed_email_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        out = []
        for domain in value:
            d = domain.strip().lower().removeprefix("@")
            if not _DOMAIN.match(d):
                raise ValueError(f"{domain!r} is not an email domain (e.g. 'example.com')")
            out.append(d)
        return out

    @field_validator("grantor")
    @classmethod
    def _grantor(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value.encode()) > 63):
            raise ValueError(f"{value!r} is not a role name (1 to 63 bytes)")
        return value

    @field_validator("lock_timeout", "statement_timeout")
    @classmethod
    def _timeouts(cls, value: timedelta) -> timedelta:
        if value > timedelta(minutes=10):
            raise ValueError("must be at most 10m: rolecall's statements are short")
        return value

    @field_validator("roles", "unsafe_allowed")
    @classmethod
    def _name_lengths(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name.encode()) > 63:
                raise ValueError(
                    f"{name!r} is longer than PostgreSQL's 63-byte limit for names "
                    "(PostgreSQL would read it as another role)"
                )
        return value

    @field_validator("logins")
    @classmethod
    def _login_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in value.items()}

    @field_validator("login_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(local="x", domain="y", email="x@y")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{value!r} may only use {{local}}, {{domain}} and {{email}} ({e})") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Instance:
        if not self.approvers and not self.approver_groups:
            raise ValueError("needs at least one approver (approvers or approver_groups)")
        if self.default_duration > self.max_duration:
            raise ValueError("default_duration is longer than max_duration")
        for i, rule in enumerate([None, *self.rules]):
            where = "" if rule is None else f"rules[{i - 1}] ({rule.name})."
            self._check_rule(where, rule)
        return self

    def _check_rule(self, where: str, rule: Rule | None) -> None:
        def get(key: str) -> Any:
            value = getattr(rule, key, None) if rule is not None else None
            return value if value is not None else getattr(self, key, None)

        required = get("approvals_required") or 1
        approvers, groups = get("approvers") or [], get("approver_groups") or []
        if rule is not None and rule.approvers is not None and not rule.approvers and not groups:
            raise ValueError(f"{where}approvers: needs at least one approver (approvers or approver_groups)")
        if required > len(approvers) and not groups:
            raise ValueError(
                f"{where}approvals_required: {required} distinct approvals, but only {len(approvers)} "
                "approver(s) can give one (the requester never counts)"
            )
        if get("escalate_after") and not get("escalate_to"):
            raise ValueError(f"{where}escalate_to: escalate_after needs somewhere to escalate to")
        if get("break_glass") and get("break_glass_max") is None:
            raise ValueError(
                f"{where}break_glass_max: break_glass = true needs a break_glass_max (e.g. '30m')"
            )
        default, maximum = get("default_duration"), get("max_duration")
        if rule is not None and default is not None and maximum is not None and default > maximum:
            raise ValueError(f"{where}default_duration: longer than max_duration")

    def pagerduty_duties(self, pd: PagerDuty) -> tuple[list[str], list[str]]:
        """(schedule IDs, escalation policy IDs) that count here: its own pair, else [pagerduty]'s."""
        if self.pagerduty_schedule_ids is None and self.pagerduty_escalation_policy_ids is None:
            return list(pd.schedule_ids), list(pd.escalation_policy_ids)
        return list(self.pagerduty_schedule_ids or []), list(self.pagerduty_escalation_policy_ids or [])

    def dsn(self) -> str:
        value = os.environ.get(self.dsn_env)
        if not value:
            raise ConfigError(
                f"instance {self.name!r}: environment variable {self.dsn_env} (its admin DSN) is not set"
            )
        return value

    def target(self) -> Target:
        return Target(
            instance=self.name,
            dsn_env=self.dsn_env,
            connect_timeout=self.connect_timeout,
            lock_timeout=self.lock_timeout,
            statement_timeout=self.statement_timeout,
            max_connections=self.max_connections,
            grantor=self.grantor,
        )

    def check_requester(self, email: str) -> None:
        """Refuse a requester outside the allowed email domains, before anything starts."""
        if not self.allowed_email_domains:
            return
        domain = email.strip().lower().rpartition("@")[2]
        if domain not in self.allowed_email_domains:
            raise RequesterNotAllowed(
                f"{email} may not request access on instance {self.name!r}: only "
                f"{', '.join('@' + d for d in self.allowed_email_domains)} addresses may"
            )

    def is_requestable(self, role: str) -> bool:
        return any(matches(entry, role) for entry in self.roles)

    def rule_for(self, role: str, pd: PagerDuty) -> AppliedRule:
        """The rule that applies to this role: the first that matches, over the instance's keys.

        An instance without rules (or a role no rule names) gets the instance's own keys, under
        the name "default", exactly as before rules existed.
        """
        rule = next((r for r in self.rules if r.matches(role)), None)

        def pick(key: str, default: Any) -> Any:
            for source in (rule, self):
                value = getattr(source, key, None) if source is not None else None
                if value is not None:
                    return value
            return default

        auto = pick("auto_approve", "on_call" if pd.enabled else "never")
        if auto == "on_call" and not pd.enabled:
            auto = "never"  # nothing to ask: a rule can't turn PagerDuty on
        return AppliedRule(
            name=rule.name if rule else "default",
            approvers=list(pick("approvers", [])),
            approver_groups=list(pick("approver_groups", [])),
            approvals_required=pick("approvals_required", 1),
            allow_self_approval=pick("allow_self_approval", False),
            default_duration=pick("default_duration", timedelta(hours=1)),
            max_duration=pick("max_duration", timedelta(hours=8)),
            approval_timeout=pick("approval_timeout", timedelta(hours=24)),
            terminate_sessions=pick("terminate_sessions", True),
            auto_approve=auto,
            on_call_max_escalation_level=pick("on_call_max_escalation_level", pd.max_escalation_level),
            auto_approve_max=pick("auto_approve_max", pd.auto_approve_max),
            require_reason=pick("require_reason", False),
            reason_pattern=pick("reason_pattern", None),
            break_glass=pick("break_glass", False),
            break_glass_max=pick("break_glass_max", None),
            review_within=pick("review_within", timedelta(hours=12)),
            expiry_warning=pick("expiry_warning", timedelta(minutes=10)),
            extend_approval=pick("extend_approval", "approver"),
            max_total_duration=pick("max_total_duration", pick("max_duration", timedelta(hours=8))),
            max_extensions=pick("max_extensions", 3),
            remind_after=pick("remind_approvers_after", timedelta(0)) or None,
            remind_every=pick("remind_every", None),
            escalate_after=pick("escalate_after", timedelta(0)) or None,
            escalate_to=list(pick("escalate_to", [])),
        )

    def rule_warnings(self) -> list[str]:
        """Rules that can never apply: every pattern is taken by an earlier rule, or by no role."""
        out = []
        for i, rule in enumerate(self.rules):
            earlier = [q for r in self.rules[:i] for q in r.roles]
            if all(any(matches(q, p) for q in earlier) for p in rule.roles):
                out.append(
                    f"instances.{self.name}.rules[{i}] ({rule.name}): never applies, earlier rules take "
                    f"all of its roles ({', '.join(rule.roles)})"
                )
            elif not any(any(matches(q, p) or matches(p, q) for q in self.roles) for p in rule.roles):
                out.append(
                    f"instances.{self.name}.rules[{i}] ({rule.name}): none of its roles "
                    f"({', '.join(rule.roles)}) is requestable on this instance"
                )
        return out

    def login_for(self, email: str) -> str:
        email = email.lower()
        if email in self.logins:
            return self.logins[email]
        local, _, domain = email.partition("@")
        return self.login_template.format(local=local, domain=domain, email=email)


_ANY_DUTY = (
    "both empty would count any on-call duty in the whole PagerDuty account; list the schedules "
    "or escalation policies, or set any_duty = true to mean it"
)


class PagerDuty(_Strict):
    enabled: bool = False
    token_env: str = "PAGERDUTY_TOKEN"
    url: str = "https://api.pagerduty.com"
    schedule_ids: list[str] = []
    escalation_policy_ids: list[str] = []
    max_escalation_level: int = Field(default=1, ge=1)
    auto_approve_max: Duration = timedelta(hours=1)
    timeout: float = Field(default=10.0, gt=0)
    # Both ID lists empty means any on-call duty in the whole account: only when said so.
    any_duty: bool = False

    _check_ids = field_validator("schedule_ids", "escalation_policy_ids")(_pagerduty_ids)

    @model_validator(mode="after")
    def _never_any_duty_by_accident(self) -> PagerDuty:
        if self.any_duty and (self.schedule_ids or self.escalation_policy_ids):
            raise ValueError(
                "any_duty = true counts every on-call duty, but schedule_ids or escalation_policy_ids "
                "narrow it: remove any_duty, or empty both lists"
            )
        if self.enabled and not self.any_duty and not self.schedule_ids and not self.escalation_policy_ids:
            raise ValueError(f"enabled = true with schedule_ids and escalation_policy_ids {_ANY_DUTY}")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. 'https://api.pagerduty.com'")
        return value.rstrip("/")


class Slack(_Strict):
    command: str = "/p0"
    port: int = Field(default=3000, ge=1, le=65535)


class Reconcile(_Strict):
    """The schedule that revokes memberships rolecall granted but no open request explains."""

    enabled: bool = True
    interval: Duration = timedelta(minutes=5)
    # A grant whose request is this far past its expiry without a verified revoke (workflow
    # terminated, failing, or stuck) is revoked by the reconciler.
    grace: Duration = timedelta(minutes=10)

    @field_validator("interval")
    @classmethod
    def _min_interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=30):
            raise ValueError("must be at least 30s")
        return value


class Config(_Strict):
    instances: dict[str, Instance] = Field(min_length=1)
    pagerduty: PagerDuty = PagerDuty()
    slack: Slack = Slack()
    reconcile: Reconcile = Reconcile()
    path: str = ""

    @field_validator("instances", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, body in value.items():
                if not _INSTANCE_NAME.match(name):
                    raise ValueError(f"instance name {name!r} must be letters, digits, _ . -")
                if isinstance(body, dict):
                    body.setdefault("name", name)
        return value

    @model_validator(mode="after")
    def _instance_duties(self) -> Config:
        pd = self.pagerduty
        if not pd.enabled or pd.any_duty:
            return self
        for name, inst in self.instances.items():
            if inst.pagerduty_duties(pd) == ([], []):
                raise ValueError(
                    f"instances.{name}: pagerduty_schedule_ids and pagerduty_escalation_policy_ids "
                    + _ANY_DUTY.replace("any_duty = true", "[pagerduty] any_duty = true")
                )
        return self

    def instance(self, name: str) -> Instance:
        try:
            return self.instances[name]
        except KeyError:
            known = ", ".join(sorted(self.instances))
            raise UnknownInstance(f"unknown instance {name!r} (configured: {known})") from None


# Workflows kept in memory between their tasks (temporalio's default is 1,000 too). An open
# request waits for hours on a timer; past the cache it is evicted and replayed when it wakes.
# Held grants continue in small fresh runs (rolecall.models.HeldGrant), so 1,000 keeps the
# worker at 282 MB with 10,000 open requests and revokes 1,000 simultaneous expiries within
# 8 s; at 500 they took up to 12 s, every wake evicting another about to wake (bench/README.md).
WORKFLOW_CACHE = 1000

# How long a workflow task may wait on the worker's own (sticky) queue before the server moves
# it to the shared queue, where the next worker to poll takes it and replays the request from
# its history. temporalio's 10 s, kept: it is also how late a revoke can be when the worker
# holding the request is killed (tests/test_durability.py). A burst that queues tasks past it
# snowballs instead: those time out, are replayed, and the replays lengthen the queue. 1,000
# grants ending in the same second on 2 cores sat at the edge of it (26-40 s late under
# load) until an expiry in a burst left its bookkeeping until after the REVOKEs (v11): the
# full run then revoked all within 8.4 s (bench/README.md, "Levers (2026-12-03, afternoon)").
# Raise it for larger bursts where a killed worker matters less (docs/operations.md).
STICKY_TIMEOUT = timedelta(seconds=10)


class Settings(BaseSettings):
    """Deployment settings from the environment (ROLECALL_*), never from the policy file."""

    model_config = SettingsConfigDict(env_prefix="ROLECALL_", extra="ignore")

    config: str = DEFAULT_CONFIG
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "rolecall"
    temporal_tls: bool = False
    temporal_tls_cert: str | None = None
    temporal_tls_key: str | None = None
    temporal_api_key: SecretStr | None = None
    metrics_bind: str | None = None
    log_format: str = "auto"
    graceful_shutdown: Duration = GRACEFUL_SHUTDOWN
    # Worker tuning (docs/operations.md, bench/README.md "Levers"): how many workflows stay in
    # memory between their tasks, how long a task may wait for this worker before another
    # takes it, and whether workflow code runs in temporalio's sandbox.
    max_cached_workflows: int = Field(default=WORKFLOW_CACHE, ge=0)
    sticky_timeout: Duration = STICKY_TIMEOUT
    # Off in deployments: the sandbox re-imports the workflow's module for every workflow it
    # runs or replays (~140 KB of each cached workflow, and the replay cost of an evicted
    # one). Determinism is guarded where it can be fixed: the tests run the sandbox, and the
    # replay test replays every recorded history (tests/test_workflow_runner.py).
    workflow_sandbox: bool = False
    # Shared by the Slack app (signs decisions) and the worker (verifies them), nobody else.
    decision_key: SecretStr | None = None
    # Whose people may act from Slack; unset: the workspace (and Grid organisation) of the
    # bot token, from auth.test. Read from SLACK_TEAM_ID / SLACK_ENTERPRISE_ID.
    slack_team_id: str | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_TEAM_ID", "slack_team_id")
    )
    slack_enterprise_id: str | None = Field(
        default=None, validation_alias=AliasChoices("SLACK_ENTERPRISE_ID", "slack_enterprise_id")
    )

    @property
    def decision_key_bytes(self) -> bytes | None:
        return self.decision_key.get_secret_value().encode() if self.decision_key else None

    @field_validator("slack_team_id", "slack_enterprise_id")
    @classmethod
    def _slack_id(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if value and not _SLACK_ID.match(value):
            raise ValueError(f"{value!r} is not a Slack team or enterprise ID (e.g. T0123ABCD, E0123ABCD)")
        return value or None


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment; ConfigError names the variable and what is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = []
        for item in e.errors():
            field = "_".join(str(p) for p in item["loc"])
            name = field if field.isupper() else "ROLECALL_" + field.upper()
            problems.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
        raise ConfigError("; ".join(problems)) from None


def _where(loc: tuple[Any, ...], raw: dict[str, Any] | None) -> str:
    """`instances.prod.rules[1] (billing).approvals_required` for a key inside a rule."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i > 0 and loc[i - 1] == "rules":
            parts[-1] = f"rules[{part}]"
            try:
                node: Any = raw
                for key in loc[: i + 1]:
                    node = node[key]
                parts[-1] += f" ({node['name']})"
            except (KeyError, IndexError, TypeError):
                pass
            continue
        parts.append(str(part))
    return ".".join(parts)


def _describe(error: ValidationError, raw: dict[str, Any] | None = None) -> str:
    lines = []
    for item in error.errors():
        where = _where(tuple(item["loc"]), raw)
        msg = item["msg"].removeprefix("Value error, ")
        # A check across tables (loc is empty) names its keys in the message itself.
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the policy file; ConfigError says which file, key and problem."""
    p = Path(path or os.environ.get("ROLECALL_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found (set ROLECALL_CONFIG, or copy rolecall.example.toml)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    try:
        config = Config.model_validate({**raw, "path": str(p)})
    except ValidationError as e:
        raise ConfigError(f"{p}: {_describe(e, raw)}") from None
    for inst in config.instances.values():
        for warning in inst.rule_warnings():
            log.warning("%s: %s", p, warning)
    return config


class ConfigStore:
    """The policy as it is on disk now: re-read when the file changes, last good kept on error.

    The check activity reads it, so an approver removed from the file stops approving new
    requests without a worker restart; requests already checked keep their snapshot.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._config = load(path)
        self._path = Path(self._config.path)
        self._mtime = self._stat()

    def _stat(self) -> float:
        try:
            return self._path.stat().st_mtime
        except OSError:
            return self._mtime

    def get(self) -> Config:
        mtime = self._stat()
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._config = load(self._path)
            except ConfigError as e:
                log.error("%s; keeping the previous configuration", e)
        return self._config
