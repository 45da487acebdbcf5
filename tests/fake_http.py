"""The HTTP server the fakes (Slack, PagerDuty) serve on, as a real service would behave.

A client that goes away mid-answer (a CLI that exits once it has its line, a stack torn down
with a call in flight) is nothing the service reports. socketserver prints the traceback to
sys.stderr instead, and a test that reads a CLI's stderr in the same process then sees it in
the CLI's one line (CI saw that once in test_rules).
"""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True  # a request in flight never holds the test process open

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # broken pipe, reset: the client left
            return
        super().handle_error(request, client_address)
