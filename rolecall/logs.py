"""Logging for every rolecall process: JSON lines for machines, plain text for people.

`setup_logging(settings)` writes to stderr. The format is `settings.log_format`
(`ROLECALL_LOG_FORMAT`): `json`, `text`, or `auto` (JSON unless stderr is a terminal).

Every line logged while a workflow or an activity runs carries `request_id` (the workflow
ID): lines from the SDK's `workflow.logger` / `activity.logger` take it from the
`temporal_workflow` / `temporal_activity` extra they add, and any other logger called inside
an activity (psycopg, slack_sdk, rolecall's own) gets it from the activity context.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

from temporalio import activity, workflow

from rolecall.config import Settings

# Attributes every LogRecord has; anything else was passed in `extra` and is kept.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_TEMPORAL = ("temporal_workflow", "temporal_activity")


class RequestIdFilter(logging.Filter):
    """Sets `record.request_id` (and `activity`) from Temporal's log extras or context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None):
            return True
        request_id = None
        for key in _TEMPORAL:
            details = getattr(record, key, None)
            if isinstance(details, dict) and details.get("workflow_id"):
                request_id = details["workflow_id"]
                if key == "temporal_activity":
                    record.activity = details.get("activity_type")
                break
        if request_id is None and activity.in_activity():
            info = activity.info()
            request_id, record.activity = info.workflow_id, info.activity_type
        if request_id is None and workflow.in_workflow():
            request_id = workflow.info().workflow_id
        record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in _TEMPORAL or key.startswith("_") or value is None:
                continue
            if key in ("workflow_info", "activity_info"):
                continue
            out[key] = value
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        # The SDK's loggers already append their details (workflow_id included) to the message.
        if request_id and request_id not in line:
            line = f"{line} [{request_id}]"
        return line


def use_json(log_format: str, stream: TextIO) -> bool:
    fmt = log_format.strip().lower()
    if fmt in ("json", "text"):
        return fmt == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def setup_logging(settings: Settings | None = None, stream: TextIO | None = None) -> None:
    """Send this process's logs to stderr, as JSON or text, with request ids.

    Like `logging.basicConfig`, it leaves a root logger that someone else already set up
    alone (pytest's capture, an embedding application); calling it again replaces only the
    handler it installed itself.
    """
    log_format = settings.log_format if settings else os.environ.get("ROLECALL_LOG_FORMAT", "auto")
    stream = stream or sys.stderr
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_rolecall", False):
            root.removeHandler(old)
    if root.handlers:
        return
    handler = logging.StreamHandler(stream)
    handler._rolecall = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    as_json = use_json(log_format, stream)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # In JSON the request and activity are fields; no need to repeat them in the message.
    workflow.logger.workflow_info_on_message = not as_json
    activity.logger.activity_info_on_message = not as_json
