"""What Temporal knows: which requests are open. Used by the reconciler."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle

from rolecall.config import ConfigStore
from rolecall.models import OpenGrants, ReconcileInput, RequestStatus
from rolecall.temporal import INSTANCE, REQUESTER, ROLE, quote


class TemporalActivities:
    def __init__(self, client: Client, config: ConfigStore) -> None:
        self._client = client
        self._config = config

    @activity.defn(name="open_grants")
    async def open_grants(self, inp: ReconcileInput) -> OpenGrants:
        """(role, login) of every open request on the instance, whatever its state.

        Conservative on purpose: a pair counts if an open request names it, by the login its
        status reports or, when the status cannot be read, the login the config maps to.
        """
        inst = self._config.get().instance(inp.instance)
        # Requests run on the reconciler's own task queue: that is this deployment's.
        query = (
            'WorkflowType = "AccessRequestWorkflow" AND ExecutionStatus = "Running" '
            f'AND {INSTANCE.name} = "{quote(inp.instance)}" '
            f'AND TaskQueue = "{quote(activity.info().task_queue)}"'
        )
        pairs: set[tuple[str, str]] = set()
        handles = []
        async for wf in self._client.list_workflows(query):
            sa = wf.typed_search_attributes
            role, requester = sa.get(ROLE), sa.get(REQUESTER)
            if role and requester:
                pairs.add((role, inst.login_for(requester)))
            handles.append(self._client.get_workflow_handle(wf.id, run_id=wf.run_id))
        limit = asyncio.Semaphore(16)

        async def status(h: WorkflowHandle[Any, Any]) -> None:
            async with limit:
                try:
                    s = await h.query("status", result_type=RequestStatus, rpc_timeout=timedelta(seconds=10))
                except Exception as e:  # an unreadable status keeps the config-mapped pair
                    activity.logger.warning("status of %s unreadable: %s", h, e)
                    return
                if s.db_user:
                    pairs.add((s.role, s.db_user))

        await asyncio.gather(*(status(h) for h in handles))
        activity.heartbeat()
        return OpenGrants(pairs=sorted(pairs))
