"""`rolecall setup`: prepare a Temporal namespace for rolecall (idempotent, safe to re-run).

rolecall upserts its search attributes (four Keyword, one Bool) as a request changes; an unregistered one
makes each workflow task fail with BadSearchAttributes and the request stalls. The dev server
gets them from command-line flags (`rolecall.temporal.dev_server_flags`); a real cluster gets
them here, through the operator service. On Temporal Cloud the operator service needs an
account-level API key; otherwise add them with `tcld namespace search-attributes add`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from rolecall.errors import ConfigError
from rolecall.temporal import SEARCH_ATTRIBUTES


async def register_search_attributes(
    client: Client,
    namespace: str,
    keys: Sequence[SearchAttributeKey[Any]] | None = None,
) -> list[str]:
    """Add rolecall's search attributes that `namespace` lacks; return the names added.

    Attributes already present with the right type are left alone, so a second run adds
    nothing. One present with another type is an error: rolecall cannot use it, and changing
    it is a decision for whoever owns the namespace.
    """
    wanted = keys if keys is not None else SEARCH_ATTRIBUTES
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    existing = {**listed.system_attributes, **listed.custom_attributes}
    missing: dict[str, IndexedValueType.ValueType] = {}
    for key in wanted:
        want = IndexedValueType.ValueType(int(key.indexed_value_type))
        have = existing.get(key.name)
        if have is None:
            missing[key.name] = want
        elif have != want:
            raise ConfigError(
                f"namespace {namespace!r}: search attribute {key.name} exists as "
                f"{IndexedValueType.Name(have)}, rolecall needs {IndexedValueType.Name(want)}"
            )
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)
