"""What the Slack app refuses: forged or stale requests, and bad modal input (inline errors)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from rolecall import slack_blocks as kit
from rolecall.errors import NotFound
from rolecall.models import RequestState
from tests.conftest import Roles, eventually
from tests.fake_slack import ALICE, DBA, SlackDriver, World, world_context


def form(
    w: World, view: dict[str, Any], *, role: str | None = None, duration: str = "1h", instance: str = "pg"
) -> dict[str, Any]:
    return {
        kit.B_INSTANCE: {kit.INSTANCE_SELECT: instance},
        kit.B_KIND: {"value": "role"},
        kit.B_ROLE: {"value": role or w.role},
        kit.B_DURATION: {"value": duration},
        kit.B_REASON: {"value": ""},
    }


async def nothing_started(w: World) -> None:
    with pytest.raises(NotFound):
        await w.stack.status(w.rid())


async def test_forged_and_stale_requests_get_401_and_start_nothing(make_stack, roles: Roles) -> None:
    async with world_context(make_stack, roles) as w:
        body = w.slack.command_body(ALICE, "request")
        form_type = "application/x-www-form-urlencoded"
        forged = SlackDriver(w.slack.url, w.fake, secret="not-the-secret")
        assert (await forged.command(ALICE, "request")).status == 401
        assert (await w.slack.post(body, form_type, signature="v0=" + "0" * 64)).status == 401
        assert (await w.slack.post(body, form_type, timestamp=int(time.time()) - 301)).status == 401
        assert (await w.slack.post(body, form_type, signature="")).status == 401
        # A body changed after signing.
        ts = int(time.time())
        sig = w.slack.verifier.generate_signature(timestamp=str(ts), body=body)
        tampered = body.replace("text=request", "text=list")
        assert (await w.slack.post(tampered, form_type, timestamp=ts, signature=sig)).status == 401

        # A forged submission and a forged Approve click start and change nothing.
        await forged.submit(ALICE, kit.request_modal([], _inst(w), [w.role]), form(w, {}))
        await nothing_started(w)
        rid = await w.stack.request(w.login, w.role)
        r = await forged.click(DBA, kit.APPROVE, rid, home=True)
        assert r.status == 401
        assert (
            await w.slack.post("payload=%7B%7D", form_type, timestamp=int(time.time()) - 3600)
        ).status == 401
        assert not [
            c for c in w.fake.calls if c.method in ("views.open", "views.publish", "chat.postEphemeral")
        ]
        assert (await w.stack.status(rid)).state == RequestState.PENDING

        # The control: the same request, correctly signed and fresh, works.
        r = await w.slack.post(
            w.slack.command_body(ALICE, "request"), form_type, timestamp=int(time.time()) - 200
        )
        assert r.status == 200
        await w.view()


def _inst(w: World):
    from rolecall.config import ConfigStore

    return ConfigStore(w.stack.config_path).get().instance("pg")


async def test_invalid_modal_input_is_shown_inline(make_stack, roles: Roles) -> None:
    async with world_context(make_stack, roles, more_roles=["rc_ghost_role"], max_duration="2h") as w:
        await w.slack.command(ALICE, "request")
        view = await w.view()
        durations = [o["value"] for o in view["blocks"][3]["element"]["options"]]
        assert durations == ["15m", "30m", "1h", "2h"]

        # Over the maximum (a stale modal or a hand-made payload).
        r = await w.slack.submit(ALICE, view, form(w, view, duration="9h"))
        assert r.status == 200
        answer = r.json()
        assert answer["response_action"] == "errors"
        assert "over the maximum of 2h" in answer["errors"][kit.B_DURATION]
        await nothing_started(w)

        # A role that is not requestable.
        r = await w.slack.submit(ALICE, view, form(w, view, role="postgres"))
        assert "no longer requestable" in r.json()["errors"][kit.B_ROLE]
        await nothing_started(w)

        # A requestable name that does not exist in the database: the check refuses it, inline.
        r = await w.slack.submit(ALICE, view, form(w, view, role="rc_ghost_role"))
        assert "does not exist" in r.json()["errors"][kit.B_ROLE]

        # An unknown instance.
        r = await w.slack.submit(ALICE, view, form(w, view, instance="nope"))
        assert kit.B_INSTANCE in r.json()["errors"]

        # An open request for the same role.
        rid = await w.stack.request(w.login, w.role)
        r = await w.slack.submit(ALICE, view, form(w, view))
        assert "already have a pending request" in r.json()["errors"][kit.B_ROLE]
        status = await w.stack.status(rid)
        assert status.source == "cli"  # untouched

        # A user without a visible email cannot request.
        w.fake.add_user("UNOEMAIL", None, "Hidden")
        r = await w.slack.submit("UNOEMAIL", view, form(w, view))
        assert "email" in r.json()["errors"][kit.B_INSTANCE]
        await w.slack.command("UNOEMAIL", "list")
        await eventually(lambda: bool(w.fake.responses), 10, "the answer to /p0 list")
        assert "email" in str(w.fake.responses[-1][1]["text"])
        # Nothing Slack would have refused was sent.
        assert not [
            c for c in w.fake.calls if c.response.get("error") in ("invalid_blocks", "invalid_arguments")
        ]


async def test_main_serves_http_with_the_signing_secret(make_stack, roles: Roles, tmp_path) -> None:
    """`python slack_app.py` in HTTP mode: port from config, 401 unsigned, answers signed."""
    import asyncio
    import os
    import socket
    import sys

    from tests.conftest import REPO, write_config
    from tests.fake_slack import SECRET, FakeSlack

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    role = roles.role()
    stack = await make_stack([role], worker=False)
    config = write_config(tmp_path / "app.toml", [role], ["dba@example.com"], {"slack": {"port": port}})
    with FakeSlack() as fake:
        env = {
            **os.environ,
            "SLACK_BOT_TOKEN": fake.token,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.url,
            "ROLECALL_CONFIG": str(config),
            "ROLECALL_TEMPORAL_ADDRESS": stack.address,
            "ROLECALL_TASK_QUEUE": stack.task_queue,
        }
        env.pop("SLACK_APP_TOKEN", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "slack_app.py", cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            driver = SlackDriver(f"http://127.0.0.1:{port}/slack/events", fake)

            async def up() -> bool:
                try:
                    return (await driver.command(ALICE, "help")).status == 200
                except OSError:
                    return False

            await eventually(up, 30, "the Slack app to listen")
            r = await driver.command(ALICE, "help")
            assert "/p0 request" in r.text
            unsigned = SlackDriver(driver.url, fake, secret="wrong")
            assert (await unsigned.command(ALICE, "help")).status == 401
        finally:
            proc.terminate()
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()


async def test_requester_outside_the_allowed_domains_is_refused_inline(make_stack, roles: Roles) -> None:
    async with world_context(make_stack, roles, allowed_email_domains=["corp.example"]) as w:
        await w.slack.command(ALICE, "request")
        view = await w.view()
        r = await w.slack.submit(ALICE, view, form(w, view))
        answer = r.json()
        assert answer["response_action"] == "errors" and list(answer["errors"]) == [kit.B_INSTANCE]
        assert answer["errors"][kit.B_INSTANCE] == (
            f"{w.email} may not request access on instance 'pg': only @corp.example addresses may"
        )
        await nothing_started(w)
        # The same person under an allowed address (same login, by login_template) may.
        w.fake.add_user("UCORP", f"{w.login}@corp.example", "Alice Corp")
        r = await w.slack.submit("UCORP", view, form(w, view))
        assert r.status == 200 and not r.text, r.text
        status = await w.stack.wait_state(f"access/pg/{w.role}/{w.login}@corp.example", RequestState.PENDING)
        assert status.requester == f"{w.login}@corp.example"
        await nothing_started(w)
