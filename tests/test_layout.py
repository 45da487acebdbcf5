"""Dependencies point one way: clients talk to Temporal through rolecall.contract only.

The CLI and the Slack app must not load the worker (workflows/, activities/) nor what only the
worker needs (psycopg, pdpyras); the contract's names must be the workflows' own.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

from temporalio import workflow

from rolecall import contract
from tests.conftest import REPO
from workflows.access_request import AccessRequestWorkflow
from workflows.reconcile import ReconcileWorkflow

WORKER_SIDE = ("workflows", "activities", "psycopg", "pdpyras")


def _loaded_after_import(module: str) -> list[str]:
    """Top-level packages in sys.modules after importing `module` in a fresh interpreter."""
    code = f"import json, sys, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, as its top-level package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_slack_app_does_not_load_the_worker() -> None:
    loaded = _loaded_after_import("slack_app")
    assert "slack_bolt" in loaded and "rolecall" in loaded  # the import really happened
    assert [m for m in WORKER_SIDE if m in loaded] == []


def test_the_cli_does_not_load_the_worker() -> None:
    loaded = _loaded_after_import("rolecall.cli")
    assert "temporalio" in loaded and "rolecall" in loaded
    assert [m for m in WORKER_SIDE if m in loaded] == []


def test_the_library_and_the_slack_app_never_import_workflows_or_activities() -> None:
    """At the top or lazily: only the `worker` command may load the worker (worker.py)."""
    files = sorted(
        [*(REPO / "rolecall").rglob("*.py"), *(REPO / "listeners").rglob("*.py"), REPO / "slack_app.py"]
    )
    assert REPO / "rolecall" / "pgadmin.py" in files and REPO / "listeners" / "views.py" in files
    offenders = {
        str(f.relative_to(REPO)): sorted(_imports(f) & {"workflows", "activities"})
        for f in files
        if _imports(f) & {"workflows", "activities"}
    }
    assert offenders == {}


def _types(fn: typing.Any) -> list[typing.Any]:
    """The argument types, then the return type, of a workflow method."""
    return list(typing.get_type_hints(fn).values())


def test_the_contract_names_are_the_workflows_own() -> None:
    """A rename on either side fails here, not in production."""
    req = workflow._Definition.must_from_class(AccessRequestWorkflow)
    assert req.name == contract.ACCESS_REQUEST
    assert (
        set(req.signals)
        == set(contract.SIGNALS)
        == {
            contract.APPROVE,
            contract.DENY,
            contract.CANCEL,
            contract.RELINQUISH,
            contract.REVIEW,
            contract.APPROVE_EXTENSION,
            contract.DENY_EXTENSION,
        }
    )
    assert set(req.queries) == {contract.STATUS}
    assert set(req.updates) == {contract.SUBMITTED, contract.EXTEND, contract.DECIDE}
    decide_types: list[typing.Any] = [contract.DecideRequest, contract.DecideAnswer]
    assert _types(AccessRequestWorkflow.decide) == decide_types
    assert _types(AccessRequestWorkflow.run) == [contract.AccessRequest, contract.RequestStatus]
    assert _types(AccessRequestWorkflow.status) == [contract.RequestStatus]
    assert _types(AccessRequestWorkflow.submitted) == [contract.RequestStatus]
    for name in contract.SIGNALS:
        assert _types(getattr(AccessRequestWorkflow, name)) == [contract.Decision, type(None)], name

    rec = workflow._Definition.must_from_class(ReconcileWorkflow)
    assert rec.name == contract.RECONCILE
    assert _types(ReconcileWorkflow.run) == [contract.ReconcileInput, contract.ReconcileReport]


def test_the_slack_app_never_opens_a_database_connection() -> None:
    """Not even lazily: role lists come from the worker's catalog workflow (it holds the DSNs)."""
    files = sorted([*(REPO / "listeners").rglob("*.py"), REPO / "slack_app.py"])
    offenders = {str(f.relative_to(REPO)) for f in files if _imports(f) & {"psycopg", "psycopg_pool"}}
    assert offenders == set()
    code = "\n".join(f.read_text() for f in files)
    assert "open_dsn" not in code and ".dsn()" not in code
