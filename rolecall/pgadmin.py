"""rolecall's own login on each instance: the SQL to create it, and a doctor that checks it.

Least privilege, per server version (checked on 15 and 16):
- 16+: ADMIN on each requestable role WITH INHERIT FALSE, SET FALSE: rolecall can grant and
  revoke the role but can neither use its privileges nor SET ROLE to it.
- 15: ADMIN OPTION makes rolecall a member; a NOINHERIT login keeps it from using the role's
  privileges (it could still SET ROLE: 15 has no way to stop that).
- Both: membership of pg_signal_backend to end grantees' sessions; with a NOINHERIT login
  rolecall reaches it with SET ROLE for the length of the terminate call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from rolecall.config import Instance
from rolecall.errors import DangerousRole, InstanceUnavailable
from rolecall.pg import Conn, assert_safe_role, connect
from rolecall.roles import names, patterns

DEFAULT_LOGIN = "rolecall_admin"


def _q(name: str) -> str:
    """Quote an identifier for SQL that a person will read and run (no connection at hand)."""
    return '"' + name.replace('"', '""') + '"'


def grant_admin_sql(role: str, login: str, version: int) -> str:
    if version >= 160000:
        return f"GRANT {_q(role)} TO {_q(login)} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE;"
    return f"GRANT {_q(role)} TO {_q(login)} WITH ADMIN OPTION;"


def signal_sql(login: str, version: int) -> str:
    if version >= 160000:
        return f"GRANT pg_signal_backend TO {_q(login)} WITH INHERIT TRUE, SET FALSE;"
    return f"GRANT pg_signal_backend TO {_q(login)};"


def setup_sql(instance: Instance, roles: list[str], version: int, login: str = DEFAULT_LOGIN) -> str:
    """The SQL a superuser runs once to create rolecall's login for this instance."""
    # Two workers (a rolling deploy) plus doctor and a reconcile sweep, never more.
    connection_limit = 2 * instance.max_connections + 2
    major = version // 10000
    lines = [
        f"-- rolecall's admin login for instance {instance.name!r} on PostgreSQL {major}.",
        "-- Run once as a superuser (or a role with ADMIN on each role below).",
        f"-- Then set its password or your usual authentication, and put its DSN in ${instance.dsn_env}.",
        "",
        "-- CONNECTION LIMIT: each worker holds at most max_connections (default 5) at once;",
        "-- raise it with the number of workers.",
        f"CREATE ROLE {_q(login)} LOGIN NOINHERIT CONNECTION LIMIT {connection_limit};",
        "",
    ]
    if major >= 16:
        lines.append("-- Grant and revoke these roles, without using them or SET ROLE to them:")
    else:
        lines.append("-- Grant and revoke these roles (ADMIN OPTION; NOINHERIT keeps their privileges off):")
    lines += [grant_admin_sql(role, login, version) for role in roles]
    if not roles:
        lines.append("-- (no existing role matches the instance's requestable roles yet)")
    globs = patterns(instance.roles)
    if globs:
        lines.append(f"-- Roles created later that match {', '.join(globs)} need the same GRANT.")
    lines += [
        "",
        "-- End the grantee's sessions at revoke (not superuser sessions: those stay out of reach):",
        signal_sql(login, version),
    ]
    return "\n".join(lines) + "\n"


async def requestable_roles(
    conn: psycopg.AsyncConnection[tuple[object, ...]], instance: Instance
) -> list[str]:
    """The instance's requestable roles that exist, globs expanded."""
    cur = await conn.execute("SELECT rolname FROM pg_roles ORDER BY rolname")
    existing = [str(r[0]) for r in await cur.fetchall()]
    found = []
    for name in existing:
        if instance.is_requestable(name):
            found.append(name)
    return found


@dataclass
class Finding:
    level: str  # ok, warn, fail
    subject: str
    message: str
    fix: str = ""


@dataclass
class Report:
    instance: str
    version: int = 0
    login: str = ""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.level != "fail" for f in self.findings)

    def render(self) -> str:
        head = f"instance {self.instance}"
        if self.version:
            head += f" (PostgreSQL {self.version // 10000}.{self.version % 10000}) as {self.login}"
        lines = [head]
        for f in self.findings:
            lines.append(f"  {f.level.upper():4}  {f.subject}: {f.message}")
            if f.fix:
                lines.append(f"        fix: {f.fix}")
        return "\n".join(lines)


async def doctor(instance: Instance) -> Report:
    """Can rolecall grant, revoke and end sessions for every requestable role? And the fix."""
    report = Report(instance=instance.name)
    try:
        async with connect(instance.target(), "rolecall-doctor", reuse=False) as conn:
            await _doctor(conn, instance, report)
    except InstanceUnavailable as e:
        report.findings.append(
            Finding("fail", "connection", str(e).split(": ", 1)[-1],
                    f"check ${instance.dsn_env} and that the server is reachable")
        )  # fmt: skip
    return report


async def _doctor(conn: Conn, instance: Instance, report: Report) -> None:
    version = report.version = conn.info.server_version
    cur = await conn.execute(
        "SELECT rolname, rolsuper, rolcreaterole, rolinherit FROM pg_roles WHERE rolname = current_user"
    )
    row = await cur.fetchone()
    assert row is not None
    login, is_super, createrole, inherits = str(row[0]), bool(row[1]), bool(row[2]), bool(row[3])
    report.login = login
    if is_super:
        report.findings.append(
            Finding("warn", login, "is a superuser: it works, but it can do anything",
                    f"use a least-privilege login: rolecall setup-sql --instance {instance.name}")
        )  # fmt: skip
    elif createrole and version < 160000:
        report.findings.append(
            Finding("warn", login, "has CREATEROLE: on 15 that lets it grant any non-superuser "
                    "role, including pg_execute_server_program",
                    f"ALTER ROLE {_q(login)} NOCREATEROLE; and grant ADMIN OPTION per role")
        )  # fmt: skip
    roles = await requestable_roles(conn, instance)
    for name in names(instance.roles):
        if name not in roles:
            report.findings.append(
                Finding("fail", name, "is requestable but does not exist",
                        f"CREATE ROLE {_q(name)} NOLOGIN; or remove it from the config")
            )  # fmt: skip
    for role in roles:
        report.findings.extend(await _check_role(conn, instance, role, login, is_super, inherits))
    report.findings.append(await _check_signal(conn, login, is_super, version))


async def _check_role(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    instance: Instance,
    role: str,
    login: str,
    is_super: bool,
    login_inherits: bool,
) -> list[Finding]:
    version = conn.info.server_version
    out: list[Finding] = []
    try:
        warnings = await assert_safe_role(conn, role, role in instance.unsafe_allowed)
    except DangerousRole as e:
        return [Finding("fail", role, f"will be refused: {e}", "remove it from the requestable roles")]
    out += [Finding("warn", role, w) for w in warnings]
    cur = await conn.execute(
        "SELECT pg_has_role(current_user, %s, 'MEMBER WITH ADMIN OPTION'), "
        "pg_has_role(current_user, %s, 'USAGE')",
        [role, role],
    )
    row = await cur.fetchone()
    assert row is not None
    admin, uses = bool(row[0]), bool(row[1])
    if not (is_super or admin):
        out.append(Finding("fail", role, "rolecall cannot grant or revoke it (no ADMIN OPTION)",
                           grant_admin_sql(role, login, version)))  # fmt: skip
        return out
    if uses and not is_super:
        fix = (
            f"REVOKE {_q(role)} FROM {_q(login)}; {grant_admin_sql(role, login, version)}"
            if version >= 160000
            else f"ALTER ROLE {_q(login)} NOINHERIT;"
        )
        out.append(Finding("warn", role, "rolecall's login can use this role's privileges itself", fix))
    out.append(Finding("ok", role, "grant, revoke"))
    return out


async def _check_signal(
    conn: psycopg.AsyncConnection[tuple[object, ...]], login: str, is_super: bool, version: int
) -> Finding:
    if is_super:
        return Finding("ok", "sessions", "can end grantees' sessions (superuser)")
    cur = await conn.execute("SELECT pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')")
    row = await cur.fetchone()
    if row and row[0]:
        return Finding("ok", "sessions", "can end grantees' sessions (pg_signal_backend)")
    return Finding(
        "fail",
        "sessions",
        "cannot end grantees' sessions: a session that did SET ROLE would keep the role",
        signal_sql(login, version),
    )


async def server_version(instance: Instance) -> tuple[int, list[str]]:
    try:
        async with connect(instance.target(), "rolecall-setup-sql", reuse=False) as conn:
            return conn.info.server_version, await requestable_roles(conn, instance)
    except InstanceUnavailable as e:
        raise InstanceUnavailable(
            f"{e} (to read its version and roles); pass --server-version and --role instead"
        ) from None
