"""Config changes never strand a grant: an instance removed from rolecall.toml (hot reload)
while its grants are active is still revoked at expiry, at relinquish and by the reconciler,
with what the request snapshotted at check time."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from rolecall.models import RequestState
from tests.conftest import Roles, Stack

_OTHER = """
[instances.other]
dsn_env = "ROLECALL_TEST_ADMIN_DSN"
roles = ["nothing_here"]
approvers = ["dba@example.com"]
"""


def _with_other_instance(path: Path) -> None:
    """A second instance, so the file stays valid once `pg` is taken out of it."""
    text = path.read_text()
    head, _, tables = text.partition("\n[")
    path.write_text(head + "\n" + _OTHER + ("\n[" + tables if tables else ""))


def _remove_pg(path: Path) -> None:
    text = path.read_text()
    start = text.index("[instances.pg]")
    end = text.index("[instances.other]")
    path.write_text(text[:start] + text[end:])
    later = time.time() + 2
    os.utime(path, (later, later))  # the worker re-reads the file when its mtime changes


async def _granted_then_removed(stack: Stack, login: str, role: str, duration: str) -> str:
    rid = await stack.request(login, role, duration)
    await stack.cli("approve", rid, "--as", "dba@example.com")
    await stack.wait_state(rid, RequestState.GRANTED)
    _remove_pg(stack.config_path)
    r = await stack.cli(
        "request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", "x@example.com"
    )
    assert r.code == 2 and "unknown instance 'pg'" in r.err, "the worker reloaded the file"
    return rid


async def test_removed_instance_still_revokes_at_expiry(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    _with_other_instance(stack.config_path)
    rid = await _granted_then_removed(stack, login, role, "4s")
    session = pg.connect_as(login)
    status = await stack.wait_state(rid, RequestState.EXPIRED, timeout=30)
    assert not pg.is_member(login, role)
    assert status.error is None
    try:
        session.execute("SELECT 1")
        raise AssertionError("the session that held the role survived the revoke")
    except Exception as e:  # ended by the revoke's verification
        assert "terminat" in str(e) or "closed" in str(e), e


async def test_removed_instance_still_revokes_at_relinquish(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role])
    _with_other_instance(stack.config_path)
    rid = await _granted_then_removed(stack, login, role, "1h")
    r = await stack.cli("relinquish", rid, "--as", f"{login}@example.com")
    assert r.code == 0, r.err
    await stack.wait_state(rid, RequestState.RELINQUISHED)
    assert not pg.is_member(login, role)


async def test_removed_instance_still_swept_by_the_reconciler(make_stack, roles: Roles, pg) -> None:
    role, login = roles.role(), roles.login()
    stack = await make_stack([role], sections={"reconcile": {"grace": "1s"}})
    _with_other_instance(stack.config_path)
    rid = await stack.request(login, role, "3s")
    await stack.cli("approve", rid, "--as", "dba@example.com")
    status = await stack.wait_state(rid, RequestState.GRANTED)
    await stack.client.get_workflow_handle(rid).terminate(reason="test: stranded")
    _remove_pg(stack.config_path)
    assert status.expires_at is not None
    await asyncio.sleep(max(0.0, status.expires_at.timestamp() + 1.5 - time.time()))
    r = await stack.cli("reconcile", "--instance", "pg")
    assert r.code == 0, r.err
    assert "note: instance 'pg' is not configured" in r.err
    assert f"revoked: {role} from {login} (request {rid}, terminated," in r.out
    assert not pg.is_member(login, role)
