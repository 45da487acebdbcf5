"""Check, grant and revoke role membership on PostgreSQL.

Role and login names only ever reach SQL as `sql.Identifier` or as bound parameters.
Connection problems are retryable (Temporal retries them); refusals are typed errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
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
    BadDuration,
    BadRequest,
    GrantFailed,
    InstanceUnavailable,
    NotFound,
    PrivilegesChanged,
    PrivilegesUnreadable,
    RevokeNotVerified,
    RolecallError,
)
from rolecall.explain import Privileges, explain
from rolecall.models import (
    AccessRequest,
    CatalogInput,
    CheckResult,
    GrantInput,
    GrantResult,
    Membership,
    MembershipList,
    Policy,
    PrepareResult,
    PrivilegesSnapshot,
    ReconcileInput,
    RevokeInput,
    RevokeResult,
    RoleList,
    Target,
)
from rolecall.pg import (
    CONTAINED,
    LOGIN_ROW,
    MAX_NAME_BYTES,
    Conn,
    Read,
    Row,
    SafeRole,
    check_name_length,
    connect,
    grantor_oid,
    judge_login,
    owned_objects,
    owned_objects_read,
    read_all,
    safe_role,
)
from rolecall.privileges import snapshot
from rolecall.rules import check_reason

log = logging.getLogger(__name__)

# Reading the role's privileges for the approvers' card may delay the card this long; past
# it the card says they could not be read. The grant re-reads them with more time (nobody
# waits on it, and a snapshot that cannot be compared holds the grant).
CHECK_PRIVILEGES_BUDGET = 3.0
GRANT_PRIVILEGES_BUDGET = 10.0


async def read_privileges(conn: Conn, inst: Instance, role: str, budget: float) -> tuple[Privileges, float]:
    """The role's privileges in the instance's own database, within `budget` seconds.

    On the activity's own connection only: reading the cluster's other databases would open
    more connections than the instance's `max_connections` allows (each check or grant already
    holds one), so they are listed as not read, and the card says how many.
    """
    started = time.monotonic()
    # The server enforces the budget (per statement): a client-side timeout would send a
    # cancel request on a connection of its own, past the instance's connection budget.
    await conn.execute(
        sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{max(1, int(budget * 1000))}ms"))
    )
    try:
        privs = await explain(
            conn,
            role,
            connect=None,
            unsafe_allowed=role in inst.unsafe_allowed,
            where=f"on instance {inst.name!r}",
        )
    except psycopg.errors.QueryCanceled as e:
        raise TimeoutError(f"reading the privileges took over {budget:g}s") from e
    finally:
        await conn.execute("RESET statement_timeout")  # back to the session's own setting
    return privs, time.monotonic() - started


async def privileges_snapshot(conn: Conn, inst: Instance, role: str) -> PrivilegesSnapshot:
    """The card's snapshot, or why it could not be read: never a guess."""
    try:
        privs, seconds = await read_privileges(conn, inst, role, CHECK_PRIVILEGES_BUDGET)
    except TimeoutError:
        return snapshot.unreadable(f"reading them took longer than {CHECK_PRIVILEGES_BUDGET:g} s")
    except (psycopg.Error, RolecallError, OSError) as e:
        return snapshot.unreadable(_first_line(e))
    return snapshot.snapshot(privs, seconds)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


async def _terminate_sessions(conn: Conn, login: str) -> list[int]:
    """End every session the login has open now, just after the REVOKE committed.

    Those sessions may hold the role through SET ROLE. They are picked by pid, not by
    backend_start: without pg_read_all_stats, PostgreSQL hides other users' backend_start,
    and a filter on it would silently match nothing. A NOINHERIT admin login (least
    privilege on 15) reaches pg_signal_backend by SET ROLE, for this statement only. The
    two reads go in one round trip, after the REVOKE's own: a session that starts after them
    can no longer take the role.
    """
    power, found = await read_all(
        conn,
        (
            """SELECT r.rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE'),
                      pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
               FROM pg_roles r WHERE r.rolname = current_user""",
            None,
        ),
        ("SELECT pid FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()", [login]),
    )
    pids = [int(str(r[0])) for r in found]
    if not pids:
        return []
    switch = not power[0][0] and bool(power[0][1])
    if switch:
        await conn.execute("SET ROLE pg_signal_backend")
    try:
        await conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM unnest(%s::int[]) pid", [pids])
    finally:
        if switch:
            await conn.execute("RESET ROLE")
    return pids


def _xmin(rows: list[Row]) -> str | None:
    """The xmin that `_row_xmin_read` found, or None: no row of rolecall's."""
    return str(rows[0][0]) if rows else None


@asynccontextmanager
async def heartbeating(every: float = 2.0) -> AsyncIterator[None]:
    """Heartbeat while the body runs, so Temporal notices a dead worker within the timeout."""

    async def beat() -> None:
        while True:  # sleep first: a call that ends within `every` costs no server write
            await asyncio.sleep(every)
            activity.heartbeat()

    if activity.info().is_local:  # a local activity lives inside its workflow task: no heartbeat
        yield
        return

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class PostgresActivities:
    """Activities that touch the target databases, through `rolecall.pg.connect` (bounded)."""

    def __init__(self, config: ConfigStore) -> None:
        self._config = config

    def _target(self, name: str, snapshot: Target | None) -> Target:
        """Where to connect: the current config, else the request's snapshot (instance removed).

        The grantor always comes from the snapshot: it is how this request's grant was made,
        whatever the config says now (None for requests from before grantors existed).
        """
        inst = self._config.get().instances.get(name)
        if inst is not None:
            return inst.target().model_copy(update={"grantor": snapshot.grantor if snapshot else None})
        if snapshot is None:
            raise InstanceUnavailable(
                f"instance {name!r} is no longer in the config and this request has no connection "
                "snapshot: put the instance back (revoke-only) so its grants can be revoked"
            )
        return snapshot

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
        inst.check_requester(req.requester)
        rule = inst.rule_for(req.role, config.pagerduty)
        check_reason(rule, req.reason, req.break_glass)
        if req.duration.total_seconds() <= 0:
            raise BadDuration("duration must be positive")
        # Break-glass asks are capped at break_glass_max by the workflow, like auto-approvals.
        if req.duration > rule.max_duration:
            raise BadDuration(
                f"duration {format_duration(req.duration)} is over the maximum of "
                f"{format_duration(rule.max_duration)} for {req.role!r} on instance {inst.name!r}"
                + (f" (rule {rule.name})" if rule.name != "default" else "")
            )
        db_user = inst.login_for(req.requester)
        async with connect(inst.target()) as conn:
            safe, _ = await self._assert_grantable(conn, inst, req.role, db_user, req.requester)
            warnings = safe.warnings
            cur = await conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [db_user, req.role])
            row = await cur.fetchone()
            assert row is not None
            if row[0]:
                raise AlreadyMember(
                    f"{db_user!r} already has role {req.role!r} on instance {inst.name!r} "
                    "(directly or through another role)"
                )
            privileges = await privileges_snapshot(conn, inst, req.role)
        return CheckResult(
            db_user=db_user,
            duration=req.duration,
            warnings=warnings,
            policy=Policy(
                approvers=list(rule.approvers),
                approver_groups=list(rule.approver_groups),
                slack_channel=inst.slack_channel,
                allow_self_approval=rule.allow_self_approval,
                approval_timeout=rule.approval_timeout,
                grant_timeout=inst.grant_timeout,
                terminate_sessions=rule.terminate_sessions,
                revoke_alert_after=inst.revoke_alert_after,
                auto_approve_max=rule.auto_approve_max,
                pagerduty_enabled=rule.auto_approve == "on_call",
                accept_unverified_decisions=inst.accept_unverified_decisions,
                target=inst.target(),
                rule=rule,
                privileges=privileges,
            ),
        )

    async def _assert_grantable(
        self, conn: Conn, inst: Instance, role: str, db_user: str, requester: str, also: Read | None = None
    ) -> tuple[SafeRole, list[Row]]:
        """Every rule of the check; run at request time and again, on its own connection, at grant.

        Two round trips: the role, the login and the role's closure are read together (with
        `also`, a read of the caller's that cannot fail on a missing name; its rows come back
        beside the verdict), then what the closure owns and holds (`safe_role`).
        """
        if not inst.is_requestable(role):
            raise NotFound(
                f"role {role!r} is not requestable on instance {inst.name!r} "
                f"(requestable: {', '.join(inst.roles)})"
            )
        check_name_length(role, "role")
        check_name_length(db_user, "database login")
        exists, login, admin, contained, *extra = await read_all(
            conn,
            ("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]),
            (LOGIN_ROW, [db_user]),
            ("SELECT %s = current_user", [db_user]),
            (CONTAINED, {"role": role}),
            *([also] if also is not None else []),
        )
        if not exists:
            raise NotFound(f"role {role!r} does not exist on instance {inst.name!r}")
        judge_login(login, db_user, requester, inst.name)
        if admin and admin[0][0]:
            raise BadRequest(f"{db_user!r} is rolecall's own admin login on {inst.name!r}")
        safe = await safe_role(conn, role, role in inst.unsafe_allowed, contained)
        return safe, extra[0] if extra else []

    @activity.defn(name="prepare_grant")
    async def prepare_grant(self, inp: GrantInput) -> PrepareResult:
        """Decide once, before any grant attempt, whether the membership already exists."""
        async with heartbeating():
            return await self._prepare(inp)

    async def _prepare(self, inp: GrantInput) -> PrepareResult:
        try:
            check_name_length(inp.role, "role")
            check_name_length(inp.db_user, "database login")
            async with connect(self._target(inp.instance, inp.target)) as conn:
                cur = await conn.execute(
                    """SELECT EXISTS (SELECT 1 FROM pg_auth_members m
                         JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                         WHERE r.rolname = %s AND u.rolname = %s)""",
                    [inp.role, inp.db_user],
                )
                row = await cur.fetchone()
                assert row is not None
                return PrepareResult(pre_existing=bool(row[0]))
        except RolecallError as e:
            raise e.to_application_error() from e

    @activity.defn(name="grant_role")
    async def grant_role(self, inp: GrantInput) -> GrantResult:
        """Check again, then GRANT, on the one connection.

        The role may have become unsafe (or the login a group) since the request was checked;
        the approval does not change that, so every rule of the check runs again right here.
        On 16+ the grant is WITHOUT SET, so `SET ROLE` cannot outlive the revoke.
        """
        async with heartbeating():
            work = asyncio.ensure_future(self._grant(inp))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # Cancelled (the request was cancelled): let a GRANT already sent finish (its
                # statement_timeout bounds it), then acknowledge. The workflow waits for this
                # and revokes after, so the revoke cannot overtake a late GRANT.
                with contextlib.suppress(BaseException):
                    await work
                raise

    async def _grant(self, inp: GrantInput) -> GrantResult:
        try:
            inst = self._config.get().instances.get(inp.instance)
            if inst is None:
                raise GrantFailed(f"instance {inp.instance!r} is no longer configured: nothing granted")
            target = self._target(inp.instance, inp.target)
            # Autocommit, like every statement here: a GRANT that reached the server commits
            # even if the worker dies before its answer (a held transaction would not).
            async with connect(target) as conn:
                ours = self._row_xmin_read(inp.role, inp.db_user, target)
                try:
                    safe, row = await self._assert_grantable(
                        conn, inst, inp.role, inp.db_user, inp.db_user, ours
                    )
                except BadRequest as e:
                    raise GrantFailed(str(e)) from e
                # An earlier attempt's GRANT committed before its answer was lost: its row is here.
                if _xmin(row) is None:
                    await self._assert_no_gain(conn, inst, inp)
                owned = await owned_objects(conn, inp.role, safe.contained)
                await self._execute_grant(conn, inp, target)
                row_xmin = await self._row_xmin(conn, inp.role, inp.db_user, target)
            activity.logger.info("granted %s to %s on %s", inp.role, inp.db_user, inst.name)
            return GrantResult(granted=True, owned=owned, warnings=safe.warnings, row_xmin=row_xmin)
        except RolecallError as e:
            raise e.to_application_error() from e

    async def _assert_no_gain(self, conn: Conn, inst: Instance, inp: GrantInput) -> None:
        """Refuse when the role grants more than the approvers were shown.

        Skipped when the card said the privileges could not be read (nothing to compare). The
        caller skips it when rolecall's membership row is already there: an earlier attempt
        of this grant passed this check and its GRANT committed before its answer was lost.
        """
        before = inp.privileges
        if before is None or not before.readable:
            return
        try:
            now, _ = await read_privileges(conn, inst, inp.role, GRANT_PRIVILEGES_BUDGET)
        except TimeoutError as e:
            raise PrivilegesUnreadable(
                f"the privileges of {inp.role!r} could not be re-read within "
                f"{GRANT_PRIVILEGES_BUDGET:g} s to compare them with the approved ones"
            ) from e
        except psycopg.Error as e:
            raise PrivilegesUnreadable(
                f"the privileges of {inp.role!r} could not be re-read: {_first_line(e)}"
            ) from e
        change = snapshot.gained(before, now)
        if change is not None:
            raise PrivilegesChanged(
                f"role {inp.role!r} gained privileges since the request was checked: {change}",
                snapshot.snapshot(now, 0.0).model_dump(mode="json"),
            )

    async def _execute_grant(self, conn: Conn, inp: GrantInput, target: Target) -> None:
        """The GRANT alone, in a round trip and a transaction of its own: once it reaches the
        server it commits, whatever happens to the worker (tests/faults/test_worker_killed.py
        kills it there). A read sent with it would share its transaction, and a worker dying
        before the pipeline's end would roll the GRANT back, to save one round trip (~0.5 ms)."""
        stmt = sql.SQL("GRANT {} TO {}").format(sql.Identifier(inp.role), sql.Identifier(inp.db_user))
        if conn.info.server_version >= 160000:
            stmt += sql.SQL(" WITH INHERIT TRUE, SET FALSE")
        if target.grantor:
            stmt += sql.SQL(" GRANTED BY {}").format(sql.Identifier(target.grantor))
        try:
            await conn.execute(stmt)
        except psycopg.errors.UndefinedObject as e:
            raise GrantFailed(
                f"role {inp.role!r}, login {inp.db_user!r} or grantor {target.grantor!r} no longer "
                f"exists on instance {target.instance!r}"
            ) from e
        except psycopg.errors.InsufficientPrivilege as e:
            raise GrantFailed(
                f"rolecall's admin login may not grant {inp.role!r}"
                + (f" as {target.grantor!r}" if target.grantor else "")
                + f" on instance {target.instance!r}: {e.diag.message_primary}"
            ) from e

    @activity.defn(name="revoke_role")
    async def revoke_role(self, inp: RevokeInput) -> RevokeResult:
        """REVOKE, end the login's sessions, then prove the access is gone.

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
        if inp.pre_existing:
            return RevokeResult(revoked=False, note="membership predates the request; left in place")
        target = self._target(inp.instance, inp.target)
        async with connect(target) as conn:
            if inp.require_ours and not await self._ours(conn, inp, target):
                return RevokeResult(
                    revoked=False,
                    note="rolecall's membership row is not there (another row may be): left alone",
                )
            stmt = sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(inp.role), sql.Identifier(inp.db_user))
            if target.grantor:
                stmt += sql.SQL(" GRANTED BY {}").format(sql.Identifier(target.grantor))
            try:
                await conn.execute(stmt)
            except psycopg.errors.UndefinedObject:
                # The role or the login was dropped: no membership can remain.
                return RevokeResult(revoked=True, note="role or login no longer exists")
            ended = await _terminate_sessions(conn, inp.db_user) if inp.terminate_sessions else []
            note, new_objects = await self._verify_revoked(conn, inp, target, ended)
        activity.logger.info(
            "revoked %s from %s on %s (%d sessions ended)", inp.role, inp.db_user, target.instance, len(ended)
        )
        return RevokeResult(revoked=True, terminated_sessions=len(ended), note=note, new_objects=new_objects)

    def _row_xmin_read(self, role: str, login: str, target: Target) -> Read:
        """rolecall's membership row, by its grantor: its xmin, or no row."""
        return (
            sql.SQL(
                """SELECT m.xmin::text FROM pg_auth_members m
                   JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                   WHERE r.rolname = %s AND u.rolname = %s AND m.grantor = {} AND NOT m.admin_option"""
            ).format(grantor_oid(target.grantor)),
            [role, login],
        )

    async def _row_xmin(self, conn: Conn, role: str, login: str, target: Target) -> str | None:
        (rows,) = await read_all(conn, self._row_xmin_read(role, login, target))
        return _xmin(rows)

    def _is_ours(self, xmin: str | None, inp: RevokeInput) -> bool:
        """Is rolecall's row there: by its grantor, and with require_ours by its exact xmin too."""
        if inp.require_ours:
            return xmin is not None and xmin == inp.row_xmin
        return xmin is not None

    async def _ours(self, conn: Conn, inp: RevokeInput, target: Target) -> bool:
        return self._is_ours(await self._row_xmin(conn, inp.role, inp.db_user, target), inp)

    async def _verify_revoked(
        self, conn: Conn, inp: RevokeInput, target: Target, ended: list[int]
    ) -> tuple[str, list[str]]:
        """Prove rolecall's grant and the sessions that predate the revoke are gone; then the
        note for a membership someone else made, and the objects the role came to own while
        lent (reported only: they outlive the membership).

        Every read goes in one round trip (they were five): on 2 cores, 1,000 expiries in one
        second are bound by CPU, and each round trip costs the worker and the server a wakeup.
        """
        reads: list[Read] = [
            self._row_xmin_read(inp.role, inp.db_user, target),
            ("SELECT pg_has_role(%s, %s, 'MEMBER')", [inp.db_user, inp.role]),
        ]
        if ended:
            running = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid = ANY(%s)"
            reads.append((running, [inp.db_user, ended]))
        if inp.owned_at_grant is not None:
            reads.append(owned_objects_read(inp.role))
        results = await read_all(conn, *reads)
        if self._is_ours(_xmin(results[0]), inp):
            raise RevokeNotVerified(
                f"{inp.db_user!r} is still a member of {inp.role!r} on {inp.instance!r} after REVOKE"
            )
        if ended:
            alive = results[2]
            if alive and alive[0][0]:
                raise RevokeNotVerified(
                    f"{alive[0][0]} session(s) of {inp.db_user!r} open at the revoke are still "
                    f"running on {inp.instance!r}"
                )
        new_objects: list[str] = []
        if inp.owned_at_grant is not None:
            before = set(inp.owned_at_grant)
            new_objects = [str(row[0]) for row in results[-1] if str(row[0]) not in before]
        has_role = results[1]
        if has_role and has_role[0][0]:
            # Not rolecall's grant (that one is gone): someone else granted it, directly or
            # through another role. Reported, not touched.
            note = f"{inp.db_user!r} still has {inp.role!r} through a grant made outside rolecall"
            return note, new_objects
        return "", new_objects

    @activity.defn(name="list_requestable_roles")
    async def list_requestable_roles(self, inp: CatalogInput) -> RoleList:
        """What the request modal offers: requestable roles that exist (globs expanded)."""
        inst = self._config.get().instance(inp.instance)
        try:
            async with connect(inst.target(), "rolecall-catalog") as conn:
                cur = await conn.execute(
                    "SELECT rolname FROM pg_roles WHERE NOT rolcanlogin AND rolname !~ '^pg_' ORDER BY 1"
                )
                names = [str(r[0]) for r in await cur.fetchall()]
        except RolecallError as e:
            raise e.to_application_error() from e
        return RoleList(roles=[n for n in names if inst.is_requestable(n)], loaded=True)

    @activity.defn(name="list_memberships")
    async def list_memberships(self, inp: ReconcileInput) -> MembershipList:
        """Direct memberships of the instance's requestable roles, split by who granted them.

        "Ours" means recorded with rolecall's grantor (the dedicated `grantor` role, or the
        admin login). That alone proves nothing when the admin login is a superuser or is
        also used by hand: the reconciler revokes only what its ledger also shows.
        """
        inst = self._config.get().instances.get(inp.instance)
        if inst is None:
            return MembershipList(configured=False)
        try:
            async with connect(inst.target()) as conn:
                cur = await conn.execute(
                    sql.SQL(
                        """SELECT r.rolname, u.rolname, g.rolname,
                                  m.grantor = {} AND NOT m.admin_option AS ours, current_user
                           FROM pg_auth_members m
                           JOIN pg_roles r ON r.oid = m.roleid
                           JOIN pg_roles u ON u.oid = m.member
                           LEFT JOIN pg_roles g ON g.oid = m.grantor
                           ORDER BY 1, 2"""
                    ).format(grantor_oid(inst.grantor))
                )
                rows = await cur.fetchall()
        except RolecallError as e:
            raise e.to_application_error() from e
        result = MembershipList(terminate_sessions=inst.terminate_sessions, channel=inst.slack_channel)
        for role, member, grantor, ours, admin in rows:
            result.admin_login = str(admin)
            if not inst.is_requestable(str(role)) or str(member) in (str(admin), inst.grantor):
                continue
            m = Membership(role=str(role), member=str(member), grantor=str(grantor or "?"))
            (result.ours if ours else result.foreign).append(m)
        return result
