"""Bare GRANT and REVOKE, on the product's own connection helper and instance settings.

`rolecall.pg.connect` with the config's target is what the product's activities use: the
same DSN, session timeouts and per-process connection budget (`max_connections`, reused),
so the floor differs from the product only in what runs on the connection.
"""

from __future__ import annotations

import time

from psycopg import sql
from temporalio import activity

from bench.floors.models import Committed, Membership
from rolecall.models import Target
from rolecall.pg import connect


class FloorActivities:
    def __init__(self, target: Target) -> None:
        self._target = target

    @activity.defn(name="floor_grant")
    async def grant(self, m: Membership) -> Committed:
        async with connect(self._target) as conn:
            await conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(m.role), sql.Identifier(m.login))
            )
            return Committed(at=time.time())

    @activity.defn(name="floor_revoke")
    async def revoke(self, m: Membership) -> Committed:
        async with connect(self._target) as conn:
            await conn.execute(
                sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(m.role), sql.Identifier(m.login))
            )
            return Committed(at=time.time())
