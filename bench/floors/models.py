"""The floors' payloads: one pydantic model in and one out, as the product's are."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Membership(BaseModel):
    login: str
    role: str


class Committed(BaseModel):
    """time.time() in the activity just after its autocommit statement returned (committed)."""

    at: float


class FloorInput(BaseModel):
    login: str
    role: str
    local: bool = False  # run the activities as local activities
    expires_at: datetime | None = None  # the expiry floor's instant


class FloorResult(BaseModel):
    granted_at: float | None = None
    revoked_at: float | None = None


class Hold(BaseModel):
    """The memory floor's timer: wait until then, doing nothing."""

    until: datetime


class Nudge(BaseModel):
    """A signal that carries nothing but "go" (the product's carry a Decision)."""
