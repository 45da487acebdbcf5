"""`rolecall setup` against a real dev server started WITHOUT rolecall's search attributes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from rolecall.errors import ConfigError
from rolecall.setup import register_search_attributes
from rolecall.temporal import SEARCH_ATTRIBUTES
from tests.conftest import temporal_binary

NAMES = sorted(k.name for k in SEARCH_ATTRIBUTES)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bare_env() -> AsyncIterator[WorkflowEnvironment]:
    # No search_attributes=...: the namespace starts without rolecall's attributes.
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_binary())
    try:
        yield env
    finally:
        await env.shutdown()


async def _custom(client: Client) -> dict[str, int]:
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return dict(resp.custom_attributes)


async def test_setup_registers_once_then_changes_nothing(bare_env: WorkflowEnvironment) -> None:
    client = bare_env.client
    before = await _custom(client)
    assert not set(NAMES) & set(before), "the dev server must start without rolecall's attributes"

    added = await register_search_attributes(client, client.namespace)
    assert added == NAMES
    after = await _custom(client)
    for key in SEARCH_ATTRIBUTES:  # four Keyword, RolecallAutoApproved Bool
        assert after.get(key.name) == int(key.indexed_value_type), key.name
    assert after["RolecallState"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert after["RolecallAutoApproved"] == IndexedValueType.INDEXED_VALUE_TYPE_BOOL

    again = await register_search_attributes(client, client.namespace)
    assert again == []
    assert await _custom(client) == after


async def test_setup_refuses_an_attribute_of_another_type(bare_env: WorkflowEnvironment) -> None:
    client = bare_env.client
    clash = SearchAttributeKey.for_int("RolecallClashProbe")
    await register_search_attributes(client, client.namespace, [clash])
    with pytest.raises(ConfigError, match="RolecallClashProbe exists as INDEXED_VALUE_TYPE_INT"):
        await register_search_attributes(
            client, client.namespace, [SearchAttributeKey.for_keyword("RolecallClashProbe")]
        )


async def _rolecall(*args: str, address: str) -> tuple[int, str]:
    """Run the real command line in its own process, as the compose one-shot service does."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rolecall.cli",
        *args,
        env={**os.environ, "ROLECALL_TEMPORAL_ADDRESS": address, "ROLECALL_TEMPORAL_NAMESPACE": "default"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_setup_command(bare_env: WorkflowEnvironment) -> None:
    address = bare_env.client.service_client.config.target_host
    code, out = await _rolecall("setup", address=address)
    assert code == 0, out
    # The attributes are in place already (first test, or the run above): nothing to add.
    code, out = await _rolecall("setup", address=address)
    assert code == 0, out
    assert "search attributes: up to date" in out
    assert set(NAMES) <= set(await _custom(bare_env.client))
