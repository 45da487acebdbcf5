"""One place that builds Temporal clients, so every client uses the pydantic converter."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, TLSConfig
from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
)
from temporalio.runtime import Runtime

from rolecall.config import Settings
from rolecall.errors import RolecallError

# One JSON converter, and so one pydantic TypeAdapter cache, for the whole process. The SDK
# builds a payload converter for every workflow it runs; temporalio's own pydantic converter
# would build each workflow its own TypeAdapters (~15 KB per cached workflow, measured with
# `bench/run.py --tracemalloc`). TypeAdapters are immutable once built, so sharing is safe.
_JSON = PydanticJSONPlainPayloadConverter()


class PayloadConverter(CompositePayloadConverter):
    """temporalio's pydantic payload converter, with the process-wide JSON converter."""

    def __init__(self) -> None:
        super().__init__(
            *(
                _JSON if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


DATA_CONVERTER = DataConverter(payload_converter_class=PayloadConverter)

REQUESTER = SearchAttributeKey.for_keyword("RolecallRequester")
INSTANCE = SearchAttributeKey.for_keyword("RolecallInstance")
ROLE = SearchAttributeKey.for_keyword("RolecallRole")
STATE = SearchAttributeKey.for_keyword("RolecallState")
# Set when the decision is made: true when the on-call check approved the request.
AUTO_APPROVED = SearchAttributeKey.for_bool("RolecallAutoApproved")
# The ledger: the database login, and while rolecall may hold a grant, until when. Removed
# once the revoke is proven, so `RolecallExpiresAt < now` lists grants that overstayed.
LOGIN = SearchAttributeKey.for_keyword("RolecallLogin")
EXPIRES_AT = SearchAttributeKey.for_datetime("RolecallExpiresAt")
# The rule that applied, whether it was break-glass, and who may approve (App Home, lists).
RULE = SearchAttributeKey.for_keyword("RolecallRule")
BREAK_GLASS = SearchAttributeKey.for_bool("RolecallBreakGlass")
APPROVERS = SearchAttributeKey.for_keyword_list("RolecallApprovers")
SEARCH_ATTRIBUTES: list[SearchAttributeKey[Any]] = [
    REQUESTER,
    INSTANCE,
    ROLE,
    STATE,
    AUTO_APPROVED,
    LOGIN,
    EXPIRES_AT,
    RULE,
    BREAK_GLASS,
    APPROVERS,
]


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` flags: rolecall's search attributes, and their cache on.

    Unless told otherwise, start-dev turns the server's search-attribute cache off, so that a
    new attribute is usable at once: every upsert, start and visibility record then reads the
    cluster metadata and the namespace from SQLite, two reads per attribute (most of a
    lifecycle's persistence operations, bench/README.md). A cluster caches them; rolecall's
    attributes are registered by these same flags before anything runs, so the cache is safe.
    """
    flags = ["--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=false"]
    for key in SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{key.name}={_DEV_SERVER_TYPES[key.indexed_value_type]}"]
    return flags


_DEV_SERVER_TYPES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.BOOL: "Bool",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}


def quote(value: str) -> str:
    """A string literal for a visibility query (`RolecallRole = "..."`), quotes escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def request_id(instance: str, role: str, requester: str) -> str:
    """The workflow ID: one open request per requester, instance and role, by construction."""
    return f"access/{instance}/{role}/{requester.lower()}"


async def connect(settings: Settings | None = None, runtime: Runtime | None = None) -> Client:
    s = settings or Settings()
    tls: bool | TLSConfig = s.temporal_tls
    if s.temporal_tls_cert and s.temporal_tls_key:
        with open(s.temporal_tls_cert, "rb") as cert, open(s.temporal_tls_key, "rb") as key:
            tls = TLSConfig(client_cert=cert.read(), client_private_key=key.read())
    api_key = s.temporal_api_key.get_secret_value() if s.temporal_api_key else None
    try:
        return await Client.connect(
            s.temporal_address,
            namespace=s.temporal_namespace,
            data_converter=DATA_CONVERTER,
            tls=tls if not api_key else (tls or True),
            api_key=api_key,
            runtime=runtime,
        )
    except RuntimeError as e:
        why = "connection refused" if "Connection refused" in str(e) else str(e)
        raise RolecallError(
            f"cannot reach Temporal at {s.temporal_address} ({why}); is the server running? "
            "(`make run` starts one; ROLECALL_TEMPORAL_ADDRESS points elsewhere)"
        ) from e
