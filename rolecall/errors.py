"""Errors are types: activities raise them, Temporal carries the type name, callers map it.

An activity turns a `RolecallError` into a non-retryable `ApplicationError` whose `type` is
the class name; the CLI and the Slack app look that name up here to print one clear line.
Only the type name crosses Temporal, so what a caller needs to know of an error (its exit
code, which request field it concerns) is a class attribute, never read from the message.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from temporalio.exceptions import ApplicationError

# The part of a request an error is about, e.g. the field of the Slack request modal that
# shows it: the one to change to get past it.
Field = Literal["instance", "role", "duration", "reason", "break_glass"]


class RolecallError(Exception):
    """Base: a problem with a clear message for a person."""

    exit_code = 1
    retryable = False
    field: ClassVar[Field] = "role"

    def to_application_error(self) -> ApplicationError:
        return ApplicationError(str(self), type=type(self).__name__, non_retryable=not self.retryable)


class BadRequest(RolecallError):
    """The input is wrong: unknown instance or role, bad duration, missing login."""

    exit_code = 2


class BadDuration(BadRequest):
    """The requested duration is not positive, or over the instance's maximum."""

    field = "duration"


class NotFound(BadRequest):
    """No such request, instance, role or login."""


class UnknownInstance(NotFound):
    """No instance of that name in the config."""

    field = "instance"


class LoginNotFound(NotFound):
    """The database login the requester maps to does not exist on the instance."""

    field = "instance"


class NotAllowed(BadRequest):
    """The actor may not do this (not an approver, not the requester, self-approval)."""


class BreakGlassNotAllowed(NotAllowed):
    """Break-glass (emergency) access asked for a role whose rule does not allow it."""

    field = "break_glass"


class BadReason(BadRequest):
    """The reason is missing, or does not match what the role's rule expects."""

    field = "reason"


class RequesterNotAllowed(NotAllowed):
    """The instance takes requests only from some email domains, and not this one."""

    field = "instance"


class DangerousRole(BadRequest):
    """The role could give lasting or superuser-grade access; it is never lent."""


class AlreadyRequested(BadRequest):
    """The same requester already has an open request for this role on this instance."""


class AlreadyMember(BadRequest):
    """The login already holds the role: nothing to lend."""


class ConfigError(RolecallError):
    """The configuration file or environment is invalid (e.g. an instance's DSN is not set)."""

    exit_code = 2
    field = "instance"


class GrantFailed(RolecallError):
    """PostgreSQL refused the grant for a reason retrying will not fix."""


class PrivilegesChanged(GrantFailed):
    """The role gained privileges between the request's check and its grant: not granted.

    The approvers approved what the card showed; the workflow asks them again. The activity
    attaches the new snapshot (`snapshot`) as the error's details, the next baseline.
    """

    def __init__(self, message: str, snapshot: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.snapshot = snapshot

    def to_application_error(self) -> ApplicationError:
        details = [self.snapshot] if self.snapshot is not None else []
        return ApplicationError(str(self), *details, type=type(self).__name__, non_retryable=True)


class PrivilegesUnreadable(RolecallError):
    """The grant could not re-read the role's privileges to compare them: retried, never guessed."""

    retryable = True


class InstanceUnavailable(RolecallError):
    """PostgreSQL could not be reached; retried by Temporal."""

    retryable = True
    field = "instance"


class RevokeNotVerified(RolecallError):
    """After REVOKE the login still holds the role or a session that predates it."""

    retryable = True


_ALL: tuple[type[RolecallError], ...] = (
    RolecallError,
    BadRequest,
    BadDuration,
    NotFound,
    UnknownInstance,
    LoginNotFound,
    NotAllowed,
    BreakGlassNotAllowed,
    BadReason,
    RequesterNotAllowed,
    DangerousRole,
    AlreadyRequested,
    AlreadyMember,
    ConfigError,
    GrantFailed,
    PrivilegesChanged,
    PrivilegesUnreadable,
    InstanceUnavailable,
    RevokeNotVerified,
)
BY_NAME: dict[str, type[RolecallError]] = {cls.__name__: cls for cls in _ALL}
# Listed in retry policies too, so a refusal runs exactly once whoever raised it.
NON_RETRYABLE = [cls.__name__ for cls in _ALL if not cls.retryable]
