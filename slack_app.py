"""The Slack app (Bolt, asyncio): builds the app, registers the listeners, serves it.

The listeners live in `listeners/`, one module per kind of request (`commands` for `/p0
request|list|help`, `actions` for the buttons, `views` for the modals, `events` for App Home),
behind `listeners.middleware`: only a full member of our workspace reaches a listener.
Listeners ack (Slack allows 3 s), open a modal if they have a trigger_id (valid ~3 s), then
do slow work. The app is a Temporal client only: it talks to workflows through
`rolecall.operations` and `rolecall.contract`, never by importing the worker.

Run: `python slack_app.py` (or `python -m slack_app`). Socket Mode when SLACK_APP_TOKEN is
set, else HTTP on `[slack].port` at /slack/events, checked with SLACK_SIGNING_SECRET.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.client import Client

from listeners import Deps, register_listeners
from rolecall.config import ConfigStore, Settings, load_settings
from rolecall.errors import ConfigError
from rolecall.logs import setup_logging
from rolecall.slack_client import kept_alive
from rolecall.slack_client import web_client as make_web_client
from rolecall.slack_identity import SlackIdentity

log = logging.getLogger("rolecall.slack_app")


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
    key = settings.decision_key_bytes
    if not key:
        log.warning(
            "ROLECALL_DECISION_KEY is not set: decisions from Slack are sent unsigned and recorded "
            "as unverified (instances with accept_unverified_decisions = false refuse them)"
        )
    deps = Deps(
        config=config,
        temporal=client,
        web=web,
        settings=settings,
        identity=identity or SlackIdentity(web, settings.slack_team_id, settings.slack_enterprise_id),
        decision_key=key,
    )
    register_listeners(app, deps)
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
    async with kept_alive(_client_from_env()) as slack_web:
        await _serve_with(config, client, settings, slack_web)


async def _serve_with(
    config: ConfigStore, client: Client, settings: Settings, slack_web: AsyncWebClient
) -> None:
    """Serve until SIGINT/SIGTERM, in HTTP mode or Socket Mode."""
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
