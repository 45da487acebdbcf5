"""Check, grant and revoke role membership on PostgreSQL.

Role and login names only ever reach SQL as `sql.Identifier` or as bound parameters.
Connection problems are retryable (Temporal retries them); refusals are typed errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import sql
from temporalio import activity
from temporalio.exceptions import ApplicationError

from rolecall.config import ConfigStore, Instance
from rolecall.durations import format_duration
from rolecall.errors import (
    AlreadyMember,
    BadRequest,
    GrantFailed,
    InstanceUnavailable,
    NotFound,
    RevokeNotVerified,
    RolecallError,
)
from rolecall.models import (
    AccessRequest,
    CheckResult,
    GrantInput,
    GrantResult,
    Membership,
    MembershipList,
    Policy,
    PrepareResult,
    ReconcileInput,
    RevokeInput,
    RevokeResult,
)
from rolecall.pg import MAX_NAME_BYTES, assert_safe_role, check_name_length

log = logging.getLogger(__name__)

# The grantor PostgreSQL records for our own GRANTs. 16+ records a superuser's grant as made
# by the bootstrap superuser (oid 10); 15 records current_user whoever it is.
_OUR_GRANTOR = sql.SQL(
    "(SELECT CASE WHEN rolsuper AND current_setting('server_version_num')::int >= 160000 "
    "THEN 10::oid ELSE oid END FROM pg_roles WHERE rolname = current_user)"
)


async def _terminate_sessions(conn: psycopg.AsyncConnection[tuple[object, ...]], login: str) -> list[int]:
    """End every session the login has open now, just after the REVOKE committed.

    Those sessions may hold the role through SET ROLE. They are picked by pid, not by
    backend_start: without pg_read_all_stats, PostgreSQL hides other users' backend_start,
    and a filter on it would silently match nothing. A NOINHERIT admin login (least
    privilege on 15) reaches pg_signal_backend by SET ROLE, for this statement only.
    """
    cur = await conn.execute(
        """SELECT r.rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE'),
                  pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
           FROM pg_roles r WHERE r.rolname = current_user"""
    )
    row = await cur.fetchone()
    assert row is not None
    switch = not row[0] and bool(row[1])
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()", [login]
    )
    pids = [int(str(r[0])) for r in await cur.fetchall()]
    if not pids:
        return []
    if switch:
        await conn.execute("SET ROLE pg_signal_backend")
    try:
        await conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM unnest(%s::int[]) pid", [pids])
    finally:
        if switch:
            await conn.execute("RESET ROLE")
    return pids


@asynccontextmanager
async def heartbeating(every: float = 2.0) -> AsyncIterator[None]:
    """Heartbeat while the body runs, so Temporal notices a dead worker within the timeout."""

    async def beat() -> None:
        while True:  # sleep first: a call that ends within `every` costs no server write
            await asyncio.sleep(every)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class PostgresActivities:
    """Activities that touch the target databases; one connection per call, closed after."""

    def __init__(self, config: ConfigStore) -> None:
        self._config = config

    @asynccontextmanager
    async def _connect(
        self, instance: Instance
    ) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                instance.dsn(),
                autocommit=True,
                connect_timeout=instance.connect_timeout,
                application_name="rolecall",
            )
        except psycopg.OperationalError as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InstanceUnavailable(f"cannot connect to instance {instance.name!r}: {first_line}") from e
        try:
            yield conn
        finally:
            await conn.close()

    async def _exists(self, conn: psycopg.AsyncConnection[tuple[object, ...]], name: str) -> bool:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
        return await cur.fetchone() is not None

    @activity.defn(name="check_request")
    async def check_request(self, req: AccessRequest) -> CheckResult:
        """Validate a request against the live config and database; refuse with a reason."""
        try:
            return await self._check(req)
        except RolecallError as e:
            raise e.to_application_error() from e

    async def _check(self, req: AccessRequest) -> CheckResult:
        config = self._config.get()
        inst = config.instance(req.instance)
        if req.duration.total_seconds() <= 0:
            raise BadRequest("duration must be positive")
        if req.duration > inst.max_duration:
            raise BadRequest(
                f"duration {format_duration(req.duration)} is over the maximum of "
                f"{format_duration(inst.max_duration)} on instance {inst.name!r}"
            )
        if not inst.is_requestable(req.role):
            raise NotFound(
                f"role {req.role!r} is not requestable on instance {inst.name!r} "
                f"(requestable: {', '.join(inst.roles)})"
            )
        db_user = inst.login_for(req.requester)
        check_name_length(req.role, "role")
        check_name_length(db_user, "database login")
        async with self._connect(inst) as conn:
            if not await self._exists(conn, req.role):
                raise NotFound(f"role {req.role!r} does not exist on instance {inst.name!r}")
            if not await self._exists(conn, db_user):
                raise NotFound(
                    f"database login {db_user!r} (for {req.requester}) does not exist "
                    f"on instance {inst.name!r}"
                )
            warnings = await assert_safe_role(conn, req.role, req.role in inst.unsafe_allowed)
            cur = await conn.execute(
                "SELECT pg_has_role(%s, %s, 'MEMBER'), %s = current_user",
                [db_user, req.role, db_user],
            )
            row = await cur.fetchone()
            assert row is not None
            if row[1]:
                raise BadRequest(f"{db_user!r} is rolecall's own admin login on {inst.name!r}")
            if row[0]:
                raise AlreadyMember(
                    f"{db_user!r} already has role {req.role!r} on instance {inst.name!r} "
                    "(directly or through another role)"
                )
        return CheckResult(
            db_user=db_user,
            duration=req.duration,
            warnings=warnings,
            policy=Policy(
                approvers=list(inst.approvers),
                approver_groups=list(inst.approver_groups),
                slack_channel=inst.slack_channel,
                allow_self_approval=inst.allow_self_approval,
                max_duration=inst.max_duration,
                approval_timeout=inst.approval_timeout,
                grant_timeout=inst.grant_timeout,
                terminate_sessions=inst.terminate_sessions,
                revoke_alert_after=inst.revoke_alert_after,
                auto_approve_max=config.pagerduty.auto_approve_max,
                pagerduty_enabled=config.pagerduty.enabled,
            ),
        )

    @activity.defn(name="prepare_grant")
    async def prepare_grant(self, inp: GrantInput) -> PrepareResult:
        """Decide once, before any grant attempt, whether the membership already exists."""
        async with heartbeating():
            return await self._prepare(inp)

    async def _prepare(self, inp: GrantInput) -> PrepareResult:
        try:
            check_name_length(inp.role, "role")
            check_name_length(inp.db_user, "database login")
            inst = self._instance(inp.instance)
            async with self._connect(inst) as conn:
                cur = await conn.execute(
                    """SELECT EXISTS (SELECT 1 FROM pg_auth_members m
                         JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                         WHERE r.rolname = %s AND u.rolname = %s)""",
                    [inp.role, inp.db_user],
                )
                row = await cur.fetchone()
                assert row is not None
                return PrepareResult(pre_existing=bool(row[0]), server_version=conn.info.server_version)
        except RolecallError as e:
            raise e.to_application_error() from e

    @activity.defn(name="grant_role")
    async def grant_role(self, inp: GrantInput) -> GrantResult:
        """GRANT, idempotently; on 16+ without SET so `SET ROLE` cannot outlive the revoke."""
        async with heartbeating():
            return await self._grant(inp)

    async def _grant(self, inp: GrantInput) -> GrantResult:
        try:
            check_name_length(inp.role, "role")
            check_name_length(inp.db_user, "database login")
            inst = self._instance(inp.instance)
            async with self._connect(inst) as conn:
                stmt = sql.SQL("GRANT {} TO {}").format(sql.Identifier(inp.role), sql.Identifier(inp.db_user))
                if conn.info.server_version >= 160000:
                    stmt += sql.SQL(" WITH INHERIT TRUE, SET FALSE")
                try:
                    await conn.execute(stmt)
                except psycopg.errors.UndefinedObject as e:
                    raise GrantFailed(
                        f"role {inp.role!r} or login {inp.db_user!r} no longer exists "
                        f"on instance {inst.name!r}"
                    ) from e
                except psycopg.errors.InsufficientPrivilege as e:
                    raise GrantFailed(
                        f"rolecall's admin login may not grant {inp.role!r} on instance "
                        f"{inst.name!r}: {e.diag.message_primary}"
                    ) from e
                cur = await conn.execute(
                    sql.SQL(
                        """SELECT g.rolname FROM pg_auth_members m
                           JOIN pg_roles r ON r.oid = m.roleid
                           JOIN pg_roles u ON u.oid = m.member
                           JOIN pg_roles g ON g.oid = m.grantor
                           WHERE r.rolname = %s AND u.rolname = %s AND m.grantor = {}"""
                    ).format(_OUR_GRANTOR),
                    [inp.role, inp.db_user],
                )
                row = await cur.fetchone()
                activity.logger.info("granted %s to %s on %s", inp.role, inp.db_user, inst.name)
                return GrantResult(granted=True, grantor=str(row[0]) if row else None)
        except RolecallError as e:
            raise e.to_application_error() from e

    @activity.defn(name="revoke_role")
    async def revoke_role(self, inp: RevokeInput) -> RevokeResult:
        """REVOKE, end the login's older sessions, then prove the access is gone.

        Every failure here is retryable: the workflow retries until the access is provably
        gone, and alerts the approvers when it takes too many attempts.
        """
        try:
            async with heartbeating():
                return await self._revoke(inp)
        except RolecallError as e:
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=False) from e
        except psycopg.Error as e:
            raise ApplicationError(
                f"revoke of {inp.role!r} from {inp.db_user!r} on {inp.instance!r} failed: "
                f"{type(e).__name__}: {str(e).strip()}",
                type="RevokeFailed",
            ) from e

    async def _revoke(self, inp: RevokeInput) -> RevokeResult:
        if len(inp.role.encode()) > MAX_NAME_BYTES or len(inp.db_user.encode()) > MAX_NAME_BYTES:
            # Never granted (the check refuses such names); REVOKE would hit the truncated twin.
            return RevokeResult(revoked=True, note="name over PostgreSQL's limit: nothing was granted")
        inst = self._instance(inp.instance)
        if inp.pre_existing:
            return RevokeResult(revoked=False, note="membership predates the request; left in place")
        async with self._connect(inst) as conn:
            try:
                await conn.execute(
                    sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(inp.role), sql.Identifier(inp.db_user))
                )
            except psycopg.errors.UndefinedObject:
                # The role or the login was dropped: no membership can remain.
                return RevokeResult(revoked=True, note="role or login no longer exists")
            ended = await _terminate_sessions(conn, inp.db_user) if inp.terminate_sessions else []
            note = await self._verify_revoked(conn, inp, ended)
        activity.logger.info(
            "revoked %s from %s on %s (%d sessions ended)",
            inp.role,
            inp.db_user,
            inst.name,
            len(ended),
        )
        return RevokeResult(revoked=True, terminated_sessions=len(ended), note=note)

    async def _verify_revoked(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], inp: RevokeInput, ended: list[int]
    ) -> str:
        """Prove rolecall's grant and the sessions that predate the revoke are gone."""
        cur = await conn.execute(
            sql.SQL(
                """SELECT EXISTS (SELECT 1 FROM pg_auth_members m
                     JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                     WHERE r.rolname = %s AND u.rolname = %s AND m.grantor = {})"""
            ).format(_OUR_GRANTOR),
            [inp.role, inp.db_user],
        )
        row = await cur.fetchone()
        if row and row[0]:
            raise RevokeNotVerified(
                f"{inp.db_user!r} is still a member of {inp.role!r} on {inp.instance!r} after REVOKE"
            )
        if ended:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid = ANY(%s)",
                [inp.db_user, ended],
            )
            row = await cur.fetchone()
            if row and row[0]:
                raise RevokeNotVerified(
                    f"{row[0]} session(s) of {inp.db_user!r} open at the revoke are still "
                    f"running on {inp.instance!r}"
                )
        cur = await conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [inp.db_user, inp.role])
        row = await cur.fetchone()
        if row and row[0]:
            # Not rolecall's grant (that one is gone): someone else granted it, directly or
            # through another role. Reported, not touched.
            return f"{inp.db_user!r} still has {inp.role!r} through a grant made outside rolecall"
        return ""

    @activity.defn(name="list_memberships")
    async def list_memberships(self, inp: ReconcileInput) -> MembershipList:
        """Direct memberships of the instance's requestable roles, split by who granted them.

        Rolecall's own grants are recognised by their grantor (see _OUR_GRANTOR): a dedicated
        admin login (`rolecall setup-sql`) keeps them apart from grants made by hand. A grant
        WITH ADMIN OPTION is delegated administration, which rolecall never grants.
        """
        try:
            inst = self._instance(inp.instance)
            async with self._connect(inst) as conn:
                cur = await conn.execute(
                    sql.SQL(
                        """SELECT r.rolname, u.rolname, g.rolname,
                                  m.grantor = {} AND NOT m.admin_option AS ours, current_user
                           FROM pg_auth_members m
                           JOIN pg_roles r ON r.oid = m.roleid
                           JOIN pg_roles u ON u.oid = m.member
                           LEFT JOIN pg_roles g ON g.oid = m.grantor
                           ORDER BY 1, 2"""
                    ).format(_OUR_GRANTOR)
                )
                rows = await cur.fetchall()
        except RolecallError as e:
            raise e.to_application_error() from e
        result = MembershipList(
            ours=[],
            foreign=[],
            admin_login="",
            terminate_sessions=inst.terminate_sessions,
            channel=inst.slack_channel,
        )
        for role, member, grantor, ours, admin in rows:
            result.admin_login = str(admin)
            if not inst.is_requestable(str(role)) or str(member) == str(admin):
                continue
            m = Membership(role=str(role), member=str(member), grantor=str(grantor or "?"))
            (result.ours if ours else result.foreign).append(m)
        return result

    def _instance(self, name: str) -> Instance:
        return self._config.get().instance(name)
