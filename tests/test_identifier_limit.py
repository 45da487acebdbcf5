"""PostgreSQL truncates names to 63 bytes: rolecall must never grant the truncated twin.

Found by the adversarial suite: a request for `<63 bytes>_ro` matched a `*_ro` glob, and
PostgreSQL read it as `<63 bytes>` everywhere (existence, safety check, GRANT, REVOKE).
"""

from __future__ import annotations

import pytest

from tests.conftest import Roles


@pytest.mark.parametrize("extra", [pytest.param("_ro", id="ascii"), pytest.param("_ロ", id="unicode")])
async def test_long_role_name_never_grants_its_truncated_twin(make_stack, roles: Roles, pg, extra) -> None:
    # A 63-byte role exists and is NOT requestable; the config lends roles ending in `extra`.
    twin = roles.create(roles.name("w" * (63 - len(roles.prefix) - 1)))
    assert len(twin.encode()) == 63
    asked = twin + extra  # matches the glob, and truncates to `twin`
    login = roles.login()
    stack = await make_stack([roles.prefix + "_*" + extra])
    r = await stack.cli(
        "request", "--instance", "pg", "--role", asked, "--duration", "1h", "--as", f"{login}@example.com"
    )
    assert r.code == 2, r.out
    assert "is longer than PostgreSQL's 63-byte limit for names" in r.err
    assert not pg.is_member(login, twin)


async def test_long_login_name_never_receives_a_grant_meant_for_another(make_stack, roles: Roles, pg) -> None:
    role = roles.role()
    victim = roles.create(roles.name("v" * (63 - len(roles.prefix) - 1)), "LOGIN")
    stack = await make_stack([role])
    email = f"{victim}zz@example.com"  # another person, whose login name truncates to the victim's
    r = await stack.cli("request", "--instance", "pg", "--role", role, "--duration", "1h", "--as", email)
    assert r.code == 2, r.out
    assert f"database login '{victim}zz' is longer than PostgreSQL's 63-byte limit" in r.err
    assert not pg.is_member(victim, role)


def test_config_refuses_exact_role_names_over_the_limit(tmp_path) -> None:
    from rolecall.config import load
    from rolecall.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[instances.x]\ndsn_env = "X"\nroles = ["{"r" * 64}"]\napprovers = ["a@b.co"]\n')
    with pytest.raises(ConfigError, match="longer than PostgreSQL's 63-byte limit"):
        load(cfg)
