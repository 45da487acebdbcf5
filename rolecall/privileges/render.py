"""Words for a `Privileges`: one line for a Slack card, grouped text for the CLI.

Both group the same way: by database and schema, then objects of a kind that share the
same privileges. The Slack line stays under SUMMARY_MAX characters whatever the role's
size: it falls back from per-schema groups to per-database, then per-kind counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rolecall.privileges.model import Grant, Privileges, privilege_rank

SUMMARY_MAX = 300
TEXT_NAMES = 10  # names listed per group in the text, before "and N more"
_SUMMARY_NAMES = 3
_SUMMARY_NAMES_CHARS = 60
_SCHEMALESS = {"schema", "database", "language", "foreign-data wrapper", "foreign server", "large object",
               "tablespace", "parameter"}  # fmt: skip
_PLURAL = {"foreign-data wrapper": "foreign-data wrappers", "foreign server": "foreign servers",
           "large object": "large objects", "materialized view": "materialized views",
           "foreign table": "foreign tables", "window function": "window functions"}  # fmt: skip


_KIND_FIRST = {"database": 0, "schema": 1}


def plural(kind: str, n: int) -> str:
    if n == 1:
        return kind
    return _PLURAL.get(kind, kind + "s")


@dataclass
class _Group:
    place: tuple[str, ...]  # what the objects share: (database, schema), (database,) or ()
    kind: str
    privileges: list[str]
    objects: list[tuple[str, ...]]  # identities below `place`


def _groups(
    grants: Iterable[Grant], depth: int, label: Callable[[Grant], str], schemaless: set[str] = _SCHEMALESS
) -> list[_Group]:
    """Group grants by place (depth 2: database and schema, 1: database, 0: none) and kind,
    then merge the privileges that cover exactly the same objects."""
    buckets: dict[tuple[tuple[str, ...], str], dict[str, set[tuple[str, ...]]]] = {}
    for g in grants:
        full: tuple[str, ...] = (g.database, "" if g.kind in schemaless else g.schema_name, g.name)
        full += (g.column,) if g.column else ()
        place, ident, kind = full[:depth], full[depth:], g.kind
        if g.column and depth == 2:  # columns of one table: "SELECT (a, b) on t"
            place, ident = full[:3], (g.column,)
        buckets.setdefault((place, kind), {}).setdefault(label(g), set()).add(ident)
    out = []
    for (place, kind), by_priv in buckets.items():
        merged: dict[frozenset[tuple[str, ...]], list[str]] = {}
        for priv in sorted(by_priv, key=privilege_rank):
            merged.setdefault(frozenset(by_priv[priv]), []).append(priv)
        for objects, privs in merged.items():
            out.append(_Group(place, kind, privs, sorted(objects)))
    # The database's own privileges first, then schemas', then kinds in name order.
    out.sort(key=lambda grp: (grp.place, _KIND_FIRST.get(grp.kind, 2), grp.kind,
                              privilege_rank(grp.privileges[0]), grp.objects))  # fmt: skip
    return out


def _qualify(place: tuple[str, ...], ident: tuple[str, ...], multi_db: bool) -> str:
    parts = [p for p in (*place[1:], *ident) if p]
    name = ".".join(parts)
    return f"{place[0]}:{name}" if multi_db and place and place[0] else name


def _summary_group(grp: _Group, depth: int, multi_db: bool) -> str:
    privs = ", ".join(grp.privileges)
    n = len(grp.objects)
    if depth == 2 and grp.kind == "column":
        cols = ", ".join(o[0] for o in grp.objects)
        return f"{privs} ({cols}) on {_qualify(grp.place[:2], grp.place[2:], multi_db)}"
    if depth == 2 and n == 1:
        word = "" if grp.kind == "table" else grp.kind + " "
        name = grp.objects[0][-1] if grp.kind == "database" else _qualify(grp.place, grp.objects[0], multi_db)
        return f"{privs} on {word}{name}"
    if depth == 2:
        where = ":".join(x for x in (grp.place[0] if multi_db else "", grp.place[1]) if x)
        text = f"{privs} on {n} {plural(grp.kind, n)}" + (f" in {where}" if where else "")
        names = [o[-1] for o in grp.objects]
        if n <= _SUMMARY_NAMES and len(", ".join(names)) <= _SUMMARY_NAMES_CHARS:
            text += f" ({', '.join(names)})"
        return text
    full = [(*grp.place, *o) for o in grp.objects]  # (database, schema, name[, column])
    if grp.kind == "column":
        tables = len({o[:3] for o in full})
        text = f"{privs} on {n} {plural('column', n)} of {tables} {plural('table', tables)}"
    else:
        text = f"{privs} on {n} {plural(grp.kind, n)}"
    if grp.kind not in _SCHEMALESS:
        schemas = len({o[:2] for o in full})
        text += f" in {schemas} {plural('schema', schemas)}"
    dbs = len({o[0] for o in full})
    if multi_db and depth == 1:
        text += f" of {grp.place[0]}"
    elif multi_db:
        text += f" of {dbs} {plural('database', dbs)}"
    return text


def _tail(p: Privileges) -> list[str]:
    out = []
    definers = {(g.database, g.schema_name, g.name) for g in p.grants if g.security_definer}
    if definers:
        out.append(f"{len(definers)} SECURITY DEFINER {plural('function', len(definers))}")
    owner_bypass = [r for r in p.rls if r.bypass]
    if p.bypass_rls:
        out.append("BYPASSRLS after SET ROLE " + ", ".join(p.bypass_rls))
    if owner_bypass:
        out.append(f"bypasses RLS on {len(owner_bypass)} {plural('table', len(owner_bypass))} (owner)")
    if not p.bypass_rls and not owner_bypass:
        out.append("no RLS bypass")
    if p.set_role_only:
        out.append(f"+{len(p.set_role_only)} by SET ROLE only")
    future = [d for d in p.default_privileges if d.direction == "receives"]
    if future:
        creators = {d.creator for d in future}
        out.append(f"default privileges on future objects of {len(creators)} {plural('role', len(creators))}")
    missed = [u for u in p.unreadable if not u.reason.startswith(("template", "does not allow"))]
    if missed:
        out.append(f"{len(missed)} {plural('database', len(missed))} not read")
    if p.login:
        out.append(f"beyond {p.login}'s own ({p.already_held} already held)")
    return out


def _head(p: Privileges) -> list[str]:
    out = []
    refused = [
        f"{a.role} is predefined" if a.attribute == "predefined role" else f"{a.attribute} on {a.role}"
        for a in p.attributes
        if a.refused
    ]
    if refused:
        more = f" +{len(refused) - 2}" if len(refused) > 2 else ""
        out.append(f"REFUSED ({'; '.join(refused[:2])}{more})")
    elif p.verdict == "refused":
        out.append(f"REFUSED ({_lasting_kinds(p.lasting)})")
    elif p.verdict == "lendable_by_unsafe_allowed":
        out.append(f"lendable only by unsafe_allowed ({_lasting_kinds(p.lasting)})")
    inherited = [x.role for x in p.predefined if x.access == "inherited"]
    if inherited:
        out.append("contains " + ", ".join(inherited))
    return [_cut(x, 100) for x in out]


def _lasting_kinds(lasting: list[str]) -> str:
    kinds = [
        label
        for label, marker in [
            ("owns objects", " owns "),
            ("grant options", "WITH GRANT OPTION"),
            ("ADMIN OPTION", "ADMIN OPTION"),
        ]
        if any(marker in item for item in lasting)
    ]
    return ", ".join(kinds) or "lasting access"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(p: Privileges) -> str:
    """One short line for a Slack card, under SUMMARY_MAX characters whatever the role's size."""
    head, tail = _head(p), _tail(p)
    multi_db = len({g.database for g in p.grants if g.database}) > 1
    grants = p.grants
    if not grants:
        body = [f"nothing beyond {p.login}'s own" if p.login else "no privileges beyond PUBLIC's"]
        return _cut(" · ".join(head + body + tail), SUMMARY_MAX)
    line = ""
    for depth in (2, 1, 0):
        groups = [
            _summary_group(grp, depth, multi_db) for grp in _groups(grants, depth, lambda g: g.privilege)
        ]
        line = " · ".join(head + groups + tail)
        if len(line) <= SUMMARY_MAX:
            return line
    # Even per-kind counts do not fit: keep what fits, count the rest.
    kept: list[str] = []
    for text in groups:
        if len(" · ".join([*head, *kept, text, f"+{len(groups)} more groups", *tail])) > SUMMARY_MAX:
            break
        kept.append(text)
    more = f"+{len(groups) - len(kept)} more groups"
    return _cut(" · ".join([*head, *kept, more, *tail]), SUMMARY_MAX)


# ---- the CLI's text -------------------------------------------------------------------------


def _text_label(g: Grant) -> str:
    return g.privilege + (" WITH GRANT OPTION" if g.grantable else "")


def _names(objects: list[str]) -> str:
    if len(objects) <= TEXT_NAMES:
        return ", ".join(objects)
    return ", ".join(objects[:TEXT_NAMES]) + f" and {len(objects) - TEXT_NAMES} more (--json lists all)"


def _annotated(g: Grant) -> str:
    notes = (["SECURITY DEFINER"] if g.security_definer else []) + (
        [f"owned by {g.owner}"] if g.owner else []
    )
    return g.name + (f" [{', '.join(notes)}]" if notes else "")


def _grant_lines(grants: list[Grant], indent: str) -> list[str]:
    lines: list[str] = []
    current: tuple[str, str] | None = None
    schemaless = _SCHEMALESS - {"schema"}  # a schema's own privileges head its section
    shown = {
        (g.database, "" if g.kind in schemaless else g.schema_name, g.kind, g.name): _annotated(g)
        for g in grants
    }
    for grp in _groups(grants, 2, _text_label, schemaless):
        db, schema = grp.place[0], grp.place[1]
        if current is None or current[0] != db:
            lines.append(f"{indent}database {db}:" if db else f"{indent}cluster-wide:")
            current = (db, "-")
        if current[1] != schema:
            lines.append(f"{indent}  schema {schema}:" if schema else f"{indent}  outside schemas:")
            current = (db, schema)
        privs = ", ".join(grp.privileges)
        pad = indent + "    "
        if grp.kind == "column":
            cols = ", ".join(o[0] for o in grp.objects)
            lines.append(f"{pad}{privs} ({cols}) on table {grp.place[2]}")
            continue
        names = [shown.get((db, schema, grp.kind, o[0]), o[0]) for o in grp.objects]
        if len(names) == 1:
            lines.append(f"{pad}{privs} on {grp.kind} {names[0]}")
        else:
            lines.append(f"{pad}{privs} on {len(names)} {plural(grp.kind, len(names))}: {_names(names)}")
    return lines


def render_text(p: Privileges) -> str:
    """The CLI's grouped text; large groups are counted, the JSON lists everything."""
    verdict = {
        "lendable": "lendable",
        "refused": "REFUSED by rolecall's safety check",
        "lendable_by_unsafe_allowed": "lendable only because the instance lists it in unsafe_allowed",
    }[p.verdict]
    major, minor = divmod(p.server_version, 10000)
    lines = [f'role "{p.role}" on PostgreSQL {major}.{minor}: {verdict}']
    if p.login:
        lines.append(
            f'only what it adds to login "{p.login}" ({p.already_held} of its privileges already held)'
        )
    lines.append("privileges PUBLIC holds are left out: every login has them already")
    lines += _membership_lines(p)
    lines.append("privileges:" if p.grants else "privileges: none")
    lines += _grant_lines(p.grants, "  ")
    if p.set_role_only:
        lines.append("reachable by SET ROLE only (not inherited, not counted above):")
        lines += _grant_lines(p.set_role_only, "  ")
    lines += _other_lines(p)
    return "\n".join(lines) + "\n"


def _membership_lines(p: Privileges) -> list[str]:
    if not p.memberships:
        return ["memberships: none"]
    lines = ["memberships:"]
    width = max(len(m.role) for m in p.memberships)
    for m in p.memberships:
        how = {
            "inherited": "inherited",
            "set_role_only": "SET ROLE only",
            "membership_only": "membership only",
        }
        flags = [how[m.access]]
        if m.set_role and m.access != "set_role_only":
            flags.append("SET ROLE")
        if m.admin_option:
            flags.append("ADMIN OPTION held")
        if m.already:
            flags.append("login already has it")
        via = "direct" if len(m.path) == 2 else "through " + " -> ".join(m.path[1:-1])
        lines.append(f"  {m.role:{width}}  {', '.join(flags)}; {via}")
    return lines


def _other_lines(p: Privileges) -> list[str]:
    lines = []
    if p.default_privileges:
        lines.append("default privileges (objects created later):")
        for d in p.default_privileges:
            where = f"in schema {d.schema_name}" if d.schema_name else "in every schema"
            grant = f"{d.privilege}{' WITH GRANT OPTION' if d.grantable else ''}"
            lines.append(
                f"  {d.database}: {d.object_type} {d.creator} creates {where} grant {grant} to {d.grantee}"
                + (" (received)" if d.direction == "receives" else "")
            )
    for x in p.predefined:
        how = "inherited" if x.access == "inherited" else "SET ROLE only"
        lines.append(f"predefined role {x.role} ({how}; {' -> '.join(x.path)}): {x.effect}")
    if p.rls:
        lines.append("row-level security:")
        for r in p.rls:
            bypass = "bypassed (owner)" if r.bypass else "applies" + (" (forced)" if r.forced else "")
            pol = ", ".join(r.policies) if r.policies else "none (no rows unless bypassed)"
            what = ", ".join(r.privileges)
            lines.append(f"  {r.database}: {r.schema_name}.{r.name}: {what}; {bypass}; policies: {pol}")
    bypass = ", ".join(p.bypass_rls) if p.bypass_rls else "none"
    lines.append(f"BYPASSRLS in the closure: {bypass}" + (" (only after SET ROLE)" if p.bypass_rls else ""))
    for a in p.attributes:
        verdict = "refused by rolecall" if a.refused else "not refused by rolecall"
        lines.append(f"attribute {a.attribute} on {a.role} ({' -> '.join(a.path)}): {verdict}")
    for item in p.lasting:
        lines.append(f"lasting access: {item}")
    lines.append("databases read: " + (", ".join(p.databases) or "none"))
    lines += [f"not read: {u.database}: {u.reason}" for u in p.unreadable]
    lines += [f"note: {n}" for n in p.notes]
    return lines
