"""The payload converter every client and worker uses (rolecall.temporal.DATA_CONVERTER)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rolecall.models import RequestState, RequestStatus
from rolecall.temporal import DATA_CONVERTER, PayloadConverter


def test_workflows_share_one_type_adapter_cache() -> None:
    # The SDK builds a converter per workflow it runs; they must share one JSON converter so a
    # cached workflow does not hold its own pydantic TypeAdapters.
    first, second = PayloadConverter(), PayloadConverter()
    assert first.converters[b"json/plain"] is second.converters[b"json/plain"]


def test_models_round_trip_as_json() -> None:
    status = RequestStatus(
        id="access/pg/r/a@example.com",
        state=RequestState.GRANTED,
        requester="a@example.com",
        instance="pg",
        role="r",
        requested_duration=timedelta(hours=1),
        requested_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    converter = DATA_CONVERTER.payload_converter
    [payload] = converter.to_payloads([status])
    assert payload.metadata["encoding"] == b"json/plain"
    [back] = converter.from_payloads([payload], [RequestStatus])
    assert back == status
