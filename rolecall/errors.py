"""Errors are types: activities raise them, Temporal carries the type name, callers map it.

An activity turns a `RolecallError` into a non-retryable `ApplicationError` whose `type` is
the class name; the CLI and the Slack app look that name up here to print one clear line.
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError


class RolecallError(Exception):
    """Base: a problem with a clear message for a person."""

    exit_code = 1
    retryable = False

    def to_application_error(self) -> ApplicationError:
        return ApplicationError(str(self), type=type(self).__name__, non_retryable=not self.retryable)


class BadRequest(RolecallError):
    """The input is wrong: unknown instance or role, bad duration, missing login."""

    exit_code = 2


class NotFound(BadRequest):
    """No such request, instance, role or login."""


class NotAllowed(BadRequest):
    """The actor may not do this (not an approver, not the requester, self-approval)."""


class DangerousRole(BadRequest):
    """The role could give lasting or superuser-grade access; it is never lent."""


class AlreadyRequested(BadRequest):
    """The same requester already has an open request for this role on this instance."""


class AlreadyMember(BadRequest):
    """The login already holds the role: nothing to lend."""


class ConfigError(RolecallError):
    """The configuration file or environment is invalid."""

    exit_code = 2


class GrantFailed(RolecallError):
    """PostgreSQL refused the grant for a reason retrying will not fix."""


class InstanceUnavailable(RolecallError):
    """PostgreSQL could not be reached; retried by Temporal."""

    retryable = True


class RevokeNotVerified(RolecallError):
    """After REVOKE the login still holds the role or a session that predates it."""

    retryable = True


_ALL: tuple[type[RolecallError], ...] = (
    RolecallError,
    BadRequest,
    NotFound,
    NotAllowed,
    DangerousRole,
    AlreadyRequested,
    AlreadyMember,
    ConfigError,
    GrantFailed,
    InstanceUnavailable,
    RevokeNotVerified,
)
BY_NAME: dict[str, type[RolecallError]] = {cls.__name__: cls for cls in _ALL}
# Listed in retry policies too, so a refusal runs exactly once whoever raised it.
NON_RETRYABLE = [cls.__name__ for cls in _ALL if not cls.retryable]
