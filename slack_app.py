"""The Slack app (Bolt). Until Slack is configured it says so and exits."""

from __future__ import annotations

import os
import sys


def main() -> int:
    if not os.environ.get("SLACK_BOT_TOKEN"):
        print("rolecall: Slack is not configured (SLACK_BOT_TOKEN is not set)", file=sys.stderr)
        return 2
    print("rolecall: the Slack app is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
