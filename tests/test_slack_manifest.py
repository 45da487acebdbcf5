"""The shipped manifest declares what the app uses: command, events, interactivity, scopes."""

from __future__ import annotations

import re
from typing import Any

import yaml

from rolecall.config import Slack
from tests.conftest import REPO

# Where the app, the notifier and the identity lookup they share call Slack.
CODE = (
    "slack_app.py",
    "listeners/actions.py",
    "listeners/commands.py",
    "listeners/common.py",
    "listeners/events.py",
    "listeners/middleware.py",
    "listeners/views.py",
    "activities/slack.py",
    "rolecall/slack_identity.py",
)
# Every Web API method the app and the notifier call, and the bot scope it needs.
SCOPE_OF = {
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "conversations_open": "im:write",
    "users_info": "users:read",
    "users_lookupByEmail": "users:read.email",
    "usergroups_users_list": "usergroups:read",
    "views_open": None,
    "views_update": None,
    "views_publish": None,
}


def manifest() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "slack-manifest.yml").read_text(encoding="utf-8")))


def test_manifest_declares_command_events_interactivity() -> None:
    m = manifest()
    commands = m["features"]["slash_commands"]
    assert [c["command"] for c in commands] == [Slack().command]
    assert m["features"]["app_home"]["home_tab_enabled"] is True
    assert m["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]
    assert m["settings"]["interactivity"]["is_enabled"] is True
    urls = {commands[0]["url"], m["settings"]["interactivity"]["request_url"]}
    urls.add(m["settings"]["event_subscriptions"]["request_url"])
    assert len(urls) == 1 and urls.pop().endswith("/slack/events")


def test_manifest_scopes_cover_every_method_the_code_calls() -> None:
    scopes = set(manifest()["oauth_config"]["scopes"]["bot"])
    assert "commands" in scopes and "users:read.email" in scopes
    code = "".join((REPO / f).read_text(encoding="utf-8") for f in CODE)
    called = set(re.findall(r"\.(\w+_\w+)\((?:channel|user|email|users|usergroup|view|trigger_id)=", code))
    called &= set(SCOPE_OF) | {m for m in called if m.split("_")[0] in ("chat", "users", "views")}
    assert called, "no Web API calls found"
    for method in called:
        assert method in SCOPE_OF, f"{method}: which scope does it need? add it here and to the manifest"
        need = SCOPE_OF[method]
        assert need is None or need in scopes, f"{method} needs {need}"
    # Least privilege: nothing declared that the code does not use.
    used = {s for m, s in SCOPE_OF.items() if m in called and s} | {"commands", "users:read.email"}
    assert scopes == used
