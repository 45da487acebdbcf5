"""The Slack app (Bolt, asyncio): `/p0 request|list|help`, the buttons, the modals, App Home.

Every request from Slack first passes `members_only` (a global middleware): only a full
member of our workspace, with a visible email, gets to a listener (`rolecall.slack_identity`
says who that is, from users.info cached for a minute); anyone else gets one clear line and
nothing starts. Listeners then ack (Slack allows 3 s), open a modal if they have a
trigger_id (valid ~3 s), then do slow work. Buttons carry only the request ID; the clicker's
identity is checked with `rolecall.policy.refusal` here for a clear ephemeral answer, and
again in the workflow, which alone decides.

Run: `python slack_app.py` (or `python -m slack_app`). Socket Mode when SLACK_APP_TOKEN is
set, else HTTP on `[slack].port` at /slack/events, checked with SLACK_SIGNING_SECRET.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client

from rolecall import operations
from rolecall import slack_blocks as kit
from rolecall.config import ConfigStore, Instance, Settings, load_settings
from rolecall.durations import format_duration, parse_duration
from rolecall.errors import AlreadyRequested, ConfigError, RolecallError
from rolecall.logs import setup_logging
from rolecall.models import AccessRequest, Decision, RequestState, RequestStatus
from rolecall.policy import DECISIONS, refusal
from rolecall.slack_client import web_client as make_web_client
from rolecall.slack_identity import NO_EMAIL, Identity, Refusal, SlackIdentity, Ttl, origin_of
from rolecall.temporal import request_id

log = logging.getLogger("rolecall.slack_app")

# How long a submission may wait for the request's check before answering Slack anyway.
SUBMIT_WAIT = 2.0
ROLE_LIST_TIMEOUT = 1.5
# A status query waits for a worker; lists skip requests that do not answer in time.
STATUS_TIMEOUT = 1.5
ACTIVE = (RequestState.PENDING, RequestState.APPROVED, RequestState.GRANTED, RequestState.REVOKING)
# Sub-commands that act for someone; the others only show the help text.
ACTING_COMMANDS = ("request", "list")


async def existing_roles(inst: Instance) -> list[str]:
    """Requestable roles that exist on the instance (exact config names if it can't be read)."""
    # Imported here, not at the top: the Slack app is a Temporal client and otherwise never
    # loads psycopg (tests/test_layout.py). Reading role lists moves to the worker side later.
    import psycopg

    try:
        dsn = inst.dsn()
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=2, application_name="rolecall-slack"
        ) as conn:
            cur = await conn.execute(
                "SELECT rolname FROM pg_roles WHERE NOT rolcanlogin AND rolname !~ '^pg_' ORDER BY 1"
            )
            names = [str(r[0]) for r in await cur.fetchall()]
        return [n for n in names if inst.is_requestable(n)]
    except (psycopg.Error, ConfigError, OSError) as e:
        log.warning("roles of instance %s could not be listed: %s", inst.name, e)
        return [r for r in inst.roles if not set("*?[") & set(r)]


def _value(values: dict[str, Any], block: str, action: str = "value") -> str:
    item = (values.get(block) or {}).get(action) or {}
    if item.get("selected_option"):
        return str(item["selected_option"]["value"])
    return str(item.get("value") or "")


def _actor(body: dict[str, Any]) -> str | None:
    """The Slack user a command, interaction or event is from (None: nobody acts)."""
    user = body.get("user")
    if isinstance(user, dict) and user.get("id"):
        return str(user["id"])
    if body.get("command") and body.get("user_id"):
        return str(body["user_id"])
    event = body.get("event")
    if (
        body.get("type") == "event_callback"
        and isinstance(event, dict)
        and isinstance(event.get("user"), str)
    ):
        return str(event["user"])
    return None


def _only_help(body: dict[str, Any]) -> bool:
    """`/p0 help` (or a typo): shows the commands to anyone and acts for nobody."""
    if not body.get("command"):
        return False
    words = str(body.get("text") or "").strip().split()
    return (words[0].lower() if words else "help") not in ACTING_COMMANDS


def _first_input(view: dict[str, Any]) -> str:
    for block in view.get("blocks") or []:
        if block.get("type") == "input" and block.get("block_id"):
            return str(block["block_id"])
    return next(iter((view.get("state") or {}).get("values") or {}), kit.B_INSTANCE)


def _me(context: AsyncBoltContext) -> Identity:
    """The identity `members_only` put in the context; a listener never runs without it."""
    me = context.get("identity")
    if not isinstance(me, Identity):
        raise RuntimeError("a listener ran without members_only's identity")
    return me


def _error_block(err: RolecallError) -> str:
    msg = str(err).lower()
    if "duration" in msg:
        return kit.B_DURATION
    if "instance" in msg and "role" not in msg:
        return kit.B_INSTANCE
    return kit.B_ROLE


def build_app(
    config: ConfigStore,
    client: Client,
    settings: Settings,
    web_client: AsyncWebClient | None = None,
    *,
    signing_secret: str | None = None,
    identity: SlackIdentity | None = None,
) -> AsyncApp:
    """The Bolt app with every listener; tests call this with a client pointed at a fake."""
    web = web_client or _client_from_env()
    app = AsyncApp(
        client=web,
        signing_secret=signing_secret
        if signing_secret is not None
        else os.environ.get("SLACK_SIGNING_SECRET"),
        process_before_response=False,
    )
    queue = settings.task_queue
    identity = identity or SlackIdentity(web, settings.slack_team_id, settings.slack_enterprise_id)
    role_cache = Ttl(30)
    background: set[asyncio.Task[Any]] = set()

    def later(coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("slack background work failed")

        task = asyncio.ensure_future(run())
        background.add(task)
        task.add_done_callback(background.discard)

    @app.middleware
    async def members_only(
        body: dict[str, Any], context: AsyncBoltContext, next: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        """Only full members of our workspace reach a listener; the rest are told why."""
        user_id = _actor(body)
        if user_id is None or _only_help(body):
            await next()
            return None
        verdict = await identity.identify(user_id, origin_of(body))
        if isinstance(verdict, Identity):
            context["identity"] = verdict
            await next()
            return None
        return turn_away(body, context, verdict)

    def turn_away(body: dict[str, Any], context: AsyncBoltContext, no: Refusal) -> BoltResponse:
        """Answer a refusal the way this kind of request can be answered; start nothing."""
        text = NO_EMAIL if no.reason == NO_EMAIL else f":no_entry_sign: {kit.escape(no.reason)}"
        kind = "command" if body.get("command") else str(body.get("type") or "")
        if kind == "view_submission":
            errors = {_first_input(body.get("view") or {}): no.short}
            return BoltResponse(status=200, body={"response_action": "errors", "errors": errors})
        if kind == "block_suggestion":
            return BoltResponse(status=200, body={"options": []})
        if kind == "command" and context.respond is not None:
            later(context.respond(text=text, response_type="ephemeral"))
        elif kind == "event_callback":
            event = body.get("event") or {}
            if event.get("type") == "app_home_opened" and event.get("tab", "home") == "home":
                later(web.views_publish(user_id=no.user_id, view=kit.refused_home(text)))
        elif kind in ("block_actions", "shortcut", "message_action"):
            later(tell(body, text))
        return BoltResponse(status=200, body="")

    async def roles_of(inst: Instance) -> list[str]:
        hit = role_cache.get(inst.name)
        if hit is not None:
            return list(hit)
        try:
            roles = await asyncio.wait_for(existing_roles(inst), ROLE_LIST_TIMEOUT)
        except TimeoutError:
            log.warning("listing roles of %s took too long; showing the configured names", inst.name)
            return [r for r in inst.roles if not set("*?[") & set(r)]
        role_cache.put(inst.name, roles)
        return roles

    async def tell(body: dict[str, Any], text: str) -> None:
        """An answer only the clicker sees: ephemeral in the channel, else a DM."""
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        if channel:
            try:
                await web.chat_postEphemeral(channel=channel, user=user, text=text)
                return
            except SlackApiError as e:
                log.warning("ephemeral answer failed (%s); sending a DM", e.response.get("error"))
        await web.chat_postMessage(channel=user, text=text)

    # ---- /p0 -----------------------------------------------------------------------------

    command = config.get().slack.command

    @app.command(command)
    async def on_command(ack: Any, command: dict[str, Any], respond: Any, context: AsyncBoltContext) -> None:
        words = (command.get("text") or "").strip().split()
        sub = words[0].lower() if words else "help"
        if sub == "request":
            await ack()
            await open_request_modal(command["trigger_id"])
        elif sub == "list":
            await ack()
            text, blocks = kit.list_blocks(await own_requests(_me(context).email))
            await respond(text=text, blocks=blocks, response_type="ephemeral")
        else:
            text, blocks = kit.help_blocks(config.get().slack.command)
            if sub != "help":
                blocks.insert(0, kit.section(f"Unknown command `{kit.escape(sub)}`."))
            await ack(text=text, blocks=blocks, response_type="ephemeral")

    async def open_request_modal(trigger_id: str) -> None:
        cfg = config.get()
        instances = list(cfg.instances.values())
        first = instances[0]
        roles = await roles_of(first)
        await web.views_open(trigger_id=trigger_id, view=kit.request_modal(instances, first, roles))

    @app.action(kit.INSTANCE_SELECT)
    async def on_instance_change(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        view = body["view"]
        chosen = _value(view["state"]["values"], kit.B_INSTANCE, kit.INSTANCE_SELECT)
        cfg = config.get()
        inst = cfg.instances.get(chosen)
        if inst is None:
            return
        roles = await roles_of(inst)
        modal = kit.request_modal(list(cfg.instances.values()), inst, roles)
        try:
            await web.views_update(view_id=view["id"], hash=view.get("hash"), view=modal)
        except SlackApiError as e:
            if e.response.get("error") != "hash_conflict":
                raise

    @app.view(kit.REQUEST_MODAL)
    async def on_request_submit(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        started = time.monotonic()
        values = body["view"]["state"]["values"]
        user_id = body["user"]["id"]
        errors: dict[str, str] = {}
        cfg = config.get()
        inst = cfg.instances.get(_value(values, kit.B_INSTANCE, kit.INSTANCE_SELECT))
        role = _value(values, kit.B_ROLE)
        reason = _value(values, kit.B_REASON).strip()
        duration: timedelta | None = None
        if inst is None:
            errors[kit.B_INSTANCE] = "Choose one of the configured instances."
        else:
            try:
                duration = parse_duration(_value(values, kit.B_DURATION))
                if duration > inst.max_duration:
                    errors[kit.B_DURATION] = (
                        f"{format_duration(duration)} is over the maximum of "
                        f"{format_duration(inst.max_duration)} on {inst.name}."
                    )
            except ValueError as e:
                errors[kit.B_DURATION] = str(e)
            if not role:
                errors[kit.B_ROLE if kit.B_ROLE in values else kit.B_INSTANCE] = (
                    f"No requestable role on {inst.name}: choose another instance."
                )
            elif not inst.is_requestable(role):
                errors[kit.B_ROLE] = f"{role} is no longer requestable on {inst.name}."
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        assert inst is not None and duration is not None
        me = _me(context)
        email, name = me.email, me.name
        # An open request for the same role: answer in the modal without starting anything.
        with contextlib.suppress(RolecallError):
            existing = await operations.get_status(client, request_id(inst.name, role, email))
            if existing.state in ACTIVE:
                await ack(
                    response_action="errors",
                    errors={kit.B_ROLE: f"You already have a {existing.state.value} request for {role}."},
                )
                return
        req = AccessRequest(
            requester=email,
            requester_name=name,
            instance=inst.name,
            role=role,
            duration=duration,
            reason=reason,
            source="slack",
            slack_user_id=user_id,
        )
        task = asyncio.ensure_future(operations.submit(client, req, queue))
        budget = max(0.2, SUBMIT_WAIT - (time.monotonic() - started))
        done, _ = await asyncio.wait({task}, timeout=budget)
        if not done:
            # The check is slow (database far away): close the modal, answer by DM.
            await ack()
            later(_finish_submit(task, user_id))
            return
        err = task.exception()
        if isinstance(err, RolecallError):
            await ack(response_action="errors", errors={_error_block(err): str(err)[:2000]})
            return
        await ack()
        if err is not None:
            log.error("submit failed: %r", err)
            await web.chat_postMessage(channel=user_id, text=f"Your request could not be started: {err}")

    async def _finish_submit(task: asyncio.Future[RequestStatus], user_id: str) -> None:
        try:
            await task
        except AlreadyRequested as e:
            await web.chat_postMessage(channel=user_id, text=f":no_entry_sign: {e}")
        except RolecallError as e:
            await web.chat_postMessage(
                channel=user_id, text=f":no_entry_sign: Your request was not accepted: {e}"
            )

    # ---- decisions -----------------------------------------------------------------------

    async def decide(body: dict[str, Any], me: Identity, signal: str, reason: str = "") -> None:
        """Pre-check, signal, then confirm the workflow took it; explain any refusal."""
        rid = (
            str(body["actions"][0]["value"]) if body.get("actions") else str(body["view"]["private_metadata"])
        )
        email = me.email
        try:
            before = await operations.decide(
                client, rid, signal, Decision(actor=email, reason=reason, via="slack")
            )
        except RolecallError as e:
            await tell(body, f":no_entry_sign: {e}")
            return
        # The workflow re-checks; if it refused (a race with another click), say why.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            status = await operations.get_status(client, rid)
            mine = [
                r for r in status.refused[len(before.refused) :] if r.actor == email and r.signal == signal
            ]
            if mine:
                await tell(body, f":no_entry_sign: {mine[-1].why}")
                break
            if signal in DECISIONS and status.state != RequestState.PENDING:
                if status.decided_by != email:
                    # Someone else's decision landed first; ours was or will be refused.
                    why = refusal(signal, email, status) or f"already decided by {status.decided_by}"
                    await tell(body, f":no_entry_sign: {why}")
                break
            if signal == "relinquish" and status.state != RequestState.GRANTED:
                break
            await asyncio.sleep(0.1)
        if (body.get("view") or {}).get("type") == "home":
            await publish_home(me)

    @app.action(kit.APPROVE)
    async def on_approve(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        await decide(body, _me(context), "approve")

    @app.action(kit.CANCEL)
    async def on_cancel(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        await decide(body, _me(context), "cancel")

    @app.action(kit.RELINQUISH)
    async def on_relinquish(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        await decide(body, _me(context), "relinquish", reason="relinquished in Slack")

    @app.action(kit.DENY)
    async def on_deny_click(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await ack()
        rid = str(body["actions"][0]["value"])
        status = await _status_or_none(rid)
        if status is None:
            await tell(body, f":no_entry_sign: no request with id {rid!r}")
            return
        why = refusal("deny", _me(context).email, status)
        if why:
            await tell(body, f":no_entry_sign: {why}")
            return
        await web.views_open(trigger_id=body["trigger_id"], view=kit.deny_modal(status))

    async def _status_or_none(rid: str) -> RequestStatus | None:
        """The status, or None when it is unknown or cannot be had quickly (no worker)."""
        try:
            return await asyncio.wait_for(operations.get_status(client, rid), STATUS_TIMEOUT)
        except (RolecallError, TimeoutError):
            return None

    @app.view(kit.DENY_MODAL)
    async def on_deny_submit(ack: Any, body: dict[str, Any], context: AsyncBoltContext) -> None:
        rid = str(body["view"]["private_metadata"])
        reason = _value(body["view"]["state"]["values"], kit.B_DENY_REASON).strip()
        actor = _me(context).email
        try:
            await operations.decide(client, rid, "deny", Decision(actor=actor, reason=reason, via="slack"))
        except RolecallError as e:
            await ack(response_action="errors", errors={kit.B_DENY_REASON: str(e)})
            return
        await ack()

    # ---- App Home and lists ----------------------------------------------------------------

    async def own_requests(email: str) -> list[RequestStatus]:
        rows = await operations.list_requests(client, requester=email, limit=100)
        ids = [r["id"] for r in rows if r["state"] in {s.value for s in ACTIVE}]
        found = await asyncio.gather(*(_status_or_none(i) for i in ids))
        return [s for s in found if s is not None and s.state in ACTIVE]

    async def waiting_for(email: str) -> list[RequestStatus]:
        rows = await operations.list_requests(client, state=RequestState.PENDING.value, limit=100)
        found = await asyncio.gather(*(_status_or_none(r["id"]) for r in rows))
        return [
            s
            for s in found
            if s is not None and s.state == RequestState.PENDING and refusal("approve", email, s) is None
        ]

    async def publish_home(me: Identity) -> None:
        mine, todo = await asyncio.gather(own_requests(me.email), waiting_for(me.email))
        grants = [s for s in mine if s.state == RequestState.GRANTED]
        pending = [s for s in mine if s.state == RequestState.PENDING]
        await web.views_publish(user_id=me.user_id, view=kit.home_view(grants, pending, todo))

    @app.event("app_home_opened")
    async def on_home(event: dict[str, Any], context: AsyncBoltContext) -> None:
        if event.get("tab", "home") == "home":
            await publish_home(_me(context))

    return app


def _client_from_env() -> AsyncWebClient:
    token = os.environ.get("SLACK_BOT_TOKEN")
    if not token:
        raise ConfigError("SLACK_BOT_TOKEN is not set")
    # SLACK_API_URL: a proxy or a local fake in front of https://slack.com/api/
    return make_web_client(token, base_url=os.environ.get("SLACK_API_URL") or None)


async def serve(settings: Settings) -> None:
    from rolecall.temporal import connect

    config = ConfigStore(os.environ.get("ROLECALL_CONFIG") or settings.config)
    try:
        client = await connect(settings)
    except RuntimeError as e:
        raise ConfigError(f"cannot reach Temporal at {settings.temporal_address}: {e}") from e
    slack_web = _client_from_env()
    identity = SlackIdentity(slack_web, settings.slack_team_id, settings.slack_enterprise_id)
    try:
        # Ask auth.test now rather than on the first click (it is cached from then on).
        await identity.workspace()
    except Exception as e:  # Slack unreachable at start: asked again on the first request
        log.warning("could not ask Slack which workspace this is yet: %s", e)
    app = build_app(config, client, settings, slack_web, identity=identity)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app_token = os.environ.get("SLACK_APP_TOKEN")
    if app_token:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        log.info("Slack app connecting in Socket Mode")
        handler = AsyncSocketModeHandler(app, app_token)
        # Not start_async(): it sleeps forever, so SIGTERM (docker stop) killed the process
        # without closing the websocket; stop like the HTTP server does.
        await handler.connect_async()  # type: ignore[no-untyped-call]
        try:
            await stop.wait()
            log.info("Slack app stopping")
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]
        return
    from aiohttp import web

    port = config.get().slack.port
    runner = web.AppRunner(app.web_app(path="/slack/events", port=port))
    await runner.setup()
    # Slack must reach it: all interfaces unless SLACK_BIND_HOST narrows it (e.g. behind a proxy).
    await web.TCPSite(runner, os.environ.get("SLACK_BIND_HOST", "0.0.0.0"), port).start()
    log.info("Slack app listening on :%d/slack/events", port)
    try:
        await stop.wait()
        log.info("Slack app stopping")
    finally:
        await runner.cleanup()


def main() -> int:
    setup_logging()
    missing = [] if os.environ.get("SLACK_BOT_TOKEN") else ["SLACK_BOT_TOKEN"]
    if not os.environ.get("SLACK_APP_TOKEN") and not os.environ.get("SLACK_SIGNING_SECRET"):
        missing.append("SLACK_SIGNING_SECRET (or SLACK_APP_TOKEN for Socket Mode)")
    if missing:
        print(f"rolecall: Slack is not configured: set {' and '.join(missing)}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(load_settings()))
    except ConfigError as e:
        print(f"rolecall: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
