"""The `rolecall` command: request and decide from a shell, run the worker, inspect requests.

Exit codes: 0 done, 2 bad input or not allowed (one clear line on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client

from rolecall import operations
from rolecall.config import Settings, load_settings
from rolecall.durations import format_duration, parse_duration
from rolecall.errors import BadRequest, NotAllowed, RolecallError
from rolecall.logs import setup_logging
from rolecall.models import AccessRequest, Decision, RequestStatus
from rolecall.policy import EXTENSION_DECISIONS, label
from rolecall.temporal import connect


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors also exit 2, on one line
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(BadRequest(message)))


def _fail(err: BaseException) -> int:
    code = err.exit_code if isinstance(err, RolecallError) else 1
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"rolecall: error: {text}", file=sys.stderr)
    return code


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rolecall", description=__doc__)
    p.add_argument("--config", help="policy file (default: $ROLECALL_CONFIG or ./rolecall.toml)")
    p.add_argument("--address", help="Temporal frontend host:port (default: $ROLECALL_TEMPORAL_ADDRESS)")
    p.add_argument("--namespace", help="Temporal namespace (default: $ROLECALL_TEMPORAL_NAMESPACE)")
    p.add_argument("--task-queue", help="Temporal task queue (default: $ROLECALL_TASK_QUEUE)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("request", help="request temporary membership of a role")
    r.add_argument("--instance", required=True)
    r.add_argument("--role", required=True)
    r.add_argument("--duration", required=True, type=_duration, help="e.g. 90s, 15m, 2h, 1h30m")
    r.add_argument("--reason", default="")
    r.add_argument("--as", dest="actor", required=True, metavar="EMAIL")
    r.add_argument(
        "--break-glass", action="store_true", help="emergency access where the role's rule allows it"
    )

    for name, helptext in [
        ("approve", "approve a pending request"),
        ("deny", "deny a pending request"),
        ("cancel", "cancel your own pending request"),
        ("relinquish", "give back access before it expires"),
        ("review", "mark a break-glass grant reviewed"),
        ("approve-extension", "approve a pending extension"),
        ("deny-extension", "deny a pending extension"),
    ]:
        d = sub.add_parser(name, help=helptext)
        d.add_argument("id")
        d.add_argument("--as", dest="actor", required=True, metavar="EMAIL")
        d.add_argument("--reason", "--note", dest="reason", default="")

    ex = sub.add_parser("extend", help="ask for more time on your granted access")
    ex.add_argument("id")
    ex.add_argument("--by", required=True, type=_duration, help="how much longer, e.g. 30m")
    ex.add_argument("--as", dest="actor", required=True, metavar="EMAIL")
    ex.add_argument("--reason", default="")

    st = sub.add_parser("status", help="show one request")
    st.add_argument("id")
    st.add_argument("--json", action="store_true")

    ls = sub.add_parser("list", help="list requests from the Temporal visibility store")
    ls.add_argument("--state")
    ls.add_argument("--requester")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--page-size", type=int, help="page through all requests, this many at a time")
    ls.add_argument("--page", help="the page token a previous --page-size listing printed")

    sub.add_parser("worker", help="run the Temporal worker")

    au = sub.add_parser("audit", help="export every request started in a time window (CSV or JSON lines)")
    au.add_argument("--since", required=True, help="start of the window: 2026-01-01 or an ISO time (UTC)")
    au.add_argument("--until", help="end of the window (exclusive; default: now)")
    au.add_argument("--format", choices=["csv", "jsonl"], default="csv")

    sq = sub.add_parser("setup-sql", help="print the SQL that creates rolecall's least-privilege login")
    sq.add_argument("--instance", required=True)
    sq.add_argument("--login", default="rolecall_admin", help="name of the login to create")
    sq.add_argument("--server-version", type=int, help="major version (e.g. 15, 16): don't connect")
    sq.add_argument("--role", action="append", default=[], help="with --server-version: a role")

    rc = sub.add_parser("reconcile", help="revoke grants no open request stands behind")
    rc.add_argument("--instance", help="only this instance")
    rc.add_argument("--dry-run", action="store_true", help="report, change nothing")

    dr = sub.add_parser("doctor", help="check rolecall can grant, revoke and end sessions")
    dr.add_argument("--instance", help="only this instance")
    sub.add_parser("setup", help="register rolecall's search attributes in the namespace (idempotent)")

    ex = sub.add_parser("explain", help="show what a membership of a role really grants")
    ex.add_argument("--instance", required=True)
    ex.add_argument("--role", required=True)
    ex.add_argument("--login", help="show only what the role adds to this login")
    ex.add_argument("--json", action="store_true")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for arg, field in [
        ("config", "config"),
        ("address", "temporal_address"),
        ("namespace", "temporal_namespace"),
        ("task_queue", "task_queue"),
    ]:
        if getattr(args, arg, None):
            overrides[field] = getattr(args, arg)
    return load_settings(**overrides)


def _print_status(s: RequestStatus) -> None:
    rows = [
        ("id", s.id),
        ("state", s.state.value),
        ("requester", s.requester),
        ("instance", s.instance),
        ("role", s.role),
        ("db_user", s.db_user),
        ("duration", format_duration(s.duration or s.requested_duration)),
        ("reason", s.reason),
        ("requested_at", s.requested_at),
        ("rule", s.rule if s.rule != "default" else ""),
        ("decided_by", s.decided_by),
        ("decided_at", s.decided_at),
        ("decided_via", s.decided_via),
        (
            "approvals",
            ", ".join(f"{a.by} ({a.via})" for a in s.approvals) if s.approvals_required > 1 else "",
        ),
        ("break_glass", s.break_glass or ""),
        ("reviewed_by", s.reviewed_by),
        ("reviewed_at", s.reviewed_at),
        ("auto_approved", s.auto_approved),
        ("granted_at", s.granted_at),
        ("expires_at", s.expires_at),
        ("revoked_at", s.revoked_at),
        ("error", s.error),
    ]
    for key, value in rows:
        if value not in (None, ""):
            print(f"{key:13} {value}")
    for w in s.warnings:
        print(f"{'warning':13} {w}")
    for r in s.refused:
        print(f"{'refused':13} {r.signal} from {r.actor} at {r.at}: {r.why}")


async def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.command in ("setup-sql", "doctor"):
        return await _admin(args, settings)
    if args.command == "explain":
        return await _explain(args, settings)
    if args.command == "worker":
        import worker

        await worker.run(settings)
        return 0
    client = await connect(settings)
    if args.command == "setup":
        from rolecall.setup import register_search_attributes

        added = await register_search_attributes(client, settings.temporal_namespace)
        print(f"search attributes added: {', '.join(added)}" if added else "search attributes: up to date")
        return 0
    if args.command == "request":
        from rolecall.config import load
        from rolecall.errors import ConfigError
        from rolecall.rules import check_reason

        # Refused here, before a workflow exists, where the policy file is at hand; the
        # check activity refuses it again either way.
        try:
            policy = load(settings.config)
        except ConfigError:
            policy = None
        if policy is not None and args.instance in policy.instances:
            inst = policy.instances[args.instance]
            inst.check_requester(args.actor)
            check_reason(inst.rule_for(args.role, policy.pagerduty), args.reason, args.break_glass)
        req = AccessRequest(
            requester=args.actor,
            instance=args.instance,
            role=args.role,
            duration=args.duration,
            reason=args.reason,
            source="cli",
            break_glass=args.break_glass,
        )
        status = await operations.submit(client, req, settings.task_queue)
        print(
            f"requested {status.role} on {status.instance} as {status.db_user} for "
            f"{format_duration(status.duration or status.requested_duration)}: {status.state.value}"
        )
        for w in status.warnings:
            print(f"warning: {w}")
        print(status.id)
        return 0
    if args.command == "extend":
        answer = await operations.extend(
            client, args.id, Decision(actor=args.actor, reason=args.reason, via="cli"), args.by
        )
        print(f"{answer.state}: {answer.message}")
        return 0
    if args.command in ("approve-extension", "deny-extension"):
        args.command = args.command.replace("-", "_")
    if args.command in ("approve", "deny", "cancel", "relinquish", "review", *EXTENSION_DECISIONS):
        decision = Decision(actor=args.actor, reason=args.reason, via="cli")
        decided = await operations.decide(client, args.id, args.command, decision)
        if decided.refused:
            raise NotAllowed(decided.refused)
        print(f"{args.command}: {args.id} is {label(decided.status.state)}")
        return 0
    if args.command == "reconcile":
        return await _reconcile(client, args, settings)
    if args.command == "status":
        status = await operations.get_status(client, args.id)
        if args.json:
            print(status.model_dump_json(indent=2))
        else:
            _print_status(status)
        return 0
    if args.command == "audit":
        from rolecall import audit

        since, until = audit.parse_window(args.since, args.until)
        await audit.export(client, since, until, args.format, sys.stdout)
        return 0
    if args.command == "list" and (args.page_size or args.page):
        page = await operations.page_requests(
            client,
            states=[args.state] if args.state else None,
            requester=args.requester,
            page_size=max(1, min(args.page_size or 25, 1000)),
            page=args.page,
        )
        if args.json:
            print(page.model_dump_json(indent=2))
            return 0
        for item in page.rows:
            print(f"{item.state:12} {item.started:%Y-%m-%dT%H:%M:%S}  {item.requester:28} "
                  f"{item.instance}/{item.role}  {item.id}")  # fmt: skip
        print(
            f"{len(page.rows)} of {page.total}"
            + (f"; next page: --page {page.next_page}" if page.next_page else "")
        )
        return 0
    if args.command == "list":
        rows = await operations.list_requests(client, args.state, args.requester)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(
                    f"{row['state']:12} {row['started'][:19]}  {row['requester']:28} "
                    f"{row['instance']}/{row['role']}  {row['id']}"
                )
        return 0
    raise BadRequest(f"unknown command {args.command!r}")


async def _reconcile(client: Client, args: argparse.Namespace, settings: Settings) -> int:
    """Run the reconcile workflow now, on the worker, and print what it found and did."""
    from rolecall import contract
    from rolecall.config import load

    config = load(settings.config)
    names = [args.instance] if args.instance else sorted(config.instances)
    if args.instance and args.instance not in config.instances:
        # An instance taken out of the config may still have grants to sweep: its requests
        # carry what the revoke needs.
        print(
            f"note: instance {args.instance!r} is not configured; sweeping only the stranded grants "
            "its requests recorded",
            file=sys.stderr,
        )
    failed = False
    for name in names:
        report: contract.ReconcileReport = await client.execute_workflow(
            contract.RECONCILE,
            contract.ReconcileInput(instance=name, dry_run=args.dry_run),
            id=contract.manual_reconcile_id(settings.task_queue, name, uuid.uuid4().hex[:8]),
            task_queue=settings.task_queue,
            result_type=contract.ReconcileReport,
        )
        print(report.summary())
        failed = failed or bool(report.errors)
    return 1 if failed else 0


async def _admin(args: argparse.Namespace, settings: Settings) -> int:
    """Commands that talk to PostgreSQL, not to Temporal."""
    from rolecall import pgadmin
    from rolecall.config import load
    from rolecall.roles import names as role_names

    config = load(settings.config)
    if args.command == "setup-sql":
        instance = config.instance(args.instance)
        if args.server_version:
            version = args.server_version * 10000
            roles = args.role or role_names(instance.roles)
            bad = [r for r in roles if not instance.is_requestable(r)]
            if bad:
                raise BadRequest(f"role {bad[0]!r} is not requestable on instance {instance.name!r}")
        else:
            version, roles = await pgadmin.server_version(instance)
        print(pgadmin.setup_sql(instance, roles, version, args.login), end="")
        return 0
    names = [args.instance] if args.instance else sorted(config.instances)
    ok = True
    for name in names:
        report = await pgadmin.doctor(config.instance(name))
        print(report.render())
        ok = ok and report.ok
    return 0 if ok else 1


async def _explain(args: argparse.Namespace, settings: Settings) -> int:
    """Read the catalogs with the instance's admin login; talks to PostgreSQL only."""
    from rolecall import explain
    from rolecall.config import load

    privileges = await explain.explain_instance(
        load(settings.config).instance(args.instance), args.role, args.login
    )
    print(privileges.model_dump_json(indent=2) if args.json else explain.render_text(privileges), end="")
    if args.json:
        print()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging(stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rolecall list | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # one clear line, never a traceback, for anything we did not foresee
        return _fail(e)


def run() -> None:
    """Console-script entry point: exit without the interpreter's shutdown.

    The Temporal SDK's native bridge can abort the interpreter while it finalizes
    ("PyGILState_Release"), turning a finished command's exit code into 134. The work is
    done and flushed by then, so leave directly with the command's own code.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
