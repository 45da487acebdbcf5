"""A refusal shows under the request modal's field its type is about, whatever its words say."""

from __future__ import annotations

import pytest

from listeners.views import error_block
from rolecall import errors
from rolecall import slack_blocks as kit
from rolecall.models import RequestState, RequestStatus
from rolecall.operations import error_for

CASES = [
    (errors.BadDuration, kit.B_DURATION),
    (errors.UnknownInstance, kit.B_INSTANCE),
    (errors.RequesterNotAllowed, kit.B_INSTANCE),
    (errors.LoginNotFound, kit.B_INSTANCE),
    (errors.ConfigError, kit.B_INSTANCE),
    (errors.InstanceUnavailable, kit.B_INSTANCE),
    (errors.NotFound, kit.B_ROLE),
    (errors.DangerousRole, kit.B_ROLE),
    (errors.AlreadyMember, kit.B_ROLE),
    (errors.AlreadyRequested, kit.B_ROLE),
    (errors.BadRequest, kit.B_ROLE),
    (errors.BadReason, kit.B_REASON),
    (errors.BreakGlassNotAllowed, kit.B_BREAK_GLASS),
    (errors.RolecallError, kit.B_ROLE),
]


@pytest.mark.parametrize(("cls", "block"), CASES)
def test_the_type_picks_the_field_not_the_message(cls: type[errors.RolecallError], block: str) -> None:
    # Words that matched the old message-based mapping must not steer it.
    assert error_block(cls("the duration of this instance's role")) == block
    assert error_block(cls("")) == block


@pytest.mark.parametrize(("cls", "block"), CASES)
def test_the_field_survives_temporal(cls: type[errors.RolecallError], block: str) -> None:
    """Only the type name crosses Temporal (the check's refusal in the request's status)."""
    status = RequestStatus.model_validate(
        {
            "id": "access/pg/r/a@example.com",
            "state": RequestState.REJECTED,
            "requester": "a@example.com",
            "instance": "pg",
            "role": "r",
            "requested_duration": 60,
            "requested_at": "2026-01-01T00:00:00Z",
            "error": "refused",
            "error_type": cls("").to_application_error().type,
        }
    )
    assert type(error_for(status)) is cls
    assert error_block(error_for(status)) == block


def test_every_error_is_known_by_name() -> None:
    assert {c for c, _ in CASES} <= set(errors.BY_NAME.values())
