"""`rolecall list --page-size N`: pages from the visibility store, with the count of all."""

from __future__ import annotations

from tests.conftest import Roles


async def test_list_pages_through_requests(make_stack, roles: Roles, pg) -> None:
    role = roles.role()
    logins = [roles.login(f"u{i}") for i in range(3)]
    stack = await make_stack([role])
    for login in logins:
        await stack.request(login, role)
    mine = f"{roles.prefix}_"
    first = await stack.cli("list", "--state", "pending", "--page-size", "2")
    assert first.code == 0, first.err
    lines = first.out.strip().splitlines()
    assert lines[-1].startswith("2 of ") and "; next page: --page " in lines[-1]
    seen = [ln for ln in lines[:-1] if mine in ln]
    token = lines[-1].split("--page ", 1)[1]
    while token and len(seen) < len(logins):  # other tests' requests may be listed too
        r = await stack.cli("list", "--state", "pending", "--page-size", "2", "--page", token)
        assert r.code == 0, r.err
        page = r.out.strip().splitlines()
        seen += [ln for ln in page[:-1] if mine in ln]
        token = page[-1].split("--page ", 1)[1] if "--page " in page[-1] else ""
    assert sorted(ln.split()[-1] for ln in seen) == sorted(
        f"access/pg/{role}/{u}@example.com" for u in logins
    )
