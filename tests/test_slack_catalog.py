"""The request modal's role list comes from the worker side (a catalog workflow per instance),
glob matches included: the Slack app holds no database credentials."""

from __future__ import annotations

from rolecall import contract
from rolecall import slack_blocks as kit
from tests.conftest import Roles
from tests.fake_slack import ALICE, world_context


async def test_the_modal_lists_a_glob_matched_role_from_the_catalog(make_stack, roles: Roles, pg) -> None:
    glob = f"{roles.prefix}_report_*"
    matched = roles.create(f"{roles.prefix}_report_sales")
    async with world_context(make_stack, roles, more_roles=[glob]) as w:
        r = await w.slack.command(ALICE, "request")
        assert r.status == 200
        view = await w.view()
        [role_block] = [b for b in view["blocks"] if b.get("block_id") == kit.B_ROLE]
        offered = [o["value"] for o in role_block["element"]["options"]]
        assert sorted(offered) == sorted([w.role, matched])
        wf_id = contract.catalog_id(w.stack.task_queue, "pg")
        desc = await w.stack.client.get_workflow_handle(wf_id).describe()
        assert desc.workflow_type == contract.CATALOG, "listed by the worker's catalog workflow"
        await w.stack.client.get_workflow_handle(wf_id).terminate(reason="test over")
