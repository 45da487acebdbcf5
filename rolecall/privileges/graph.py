"""The membership closure of a role: what it inherits, what it can SET ROLE to, with paths.

PostgreSQL's rules (checked on 15 and 16; tests compare with `pg_has_role`):
- 16+: each grant carries INHERIT and SET options (any grantor's row counts). Privileges
  flow along INHERIT edges only; SET ROLE x needs a path of SET edges to x; after SET ROLE
  the session has x's own inherited closure.
- 15: a member inherits from every role it is directly granted iff the member has
  `rolinherit`; SET ROLE works for any role it is a member of, however reached.
- Role attributes (SUPERUSER, BYPASSRLS...) are never inherited: they apply only to the
  current user, i.e. after SET ROLE.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Edge:
    member: int
    role: int
    inherit: bool
    set_role: bool
    admin: bool


@dataclass(frozen=True)
class RoleInfo:
    oid: int
    name: str
    superuser: bool = False
    createrole: bool = False
    bypassrls: bool = False
    replication: bool = False
    login: bool = False
    createdb: bool = False
    inherit: bool = True


@dataclass
class Closure:
    """Roles reachable from `start`, each with the path (list of oids, start first)."""

    start: int
    reachable: dict[int, list[int]] = field(default_factory=dict)  # any edge: pg_has_role MEMBER
    inherited: dict[int, list[int]] = field(default_factory=dict)  # INHERIT edges: privileges
    settable: dict[int, list[int]] = field(default_factory=dict)  # SET edges: SET ROLE
    via_set: dict[int, list[int]] = field(default_factory=dict)  # after SET ROLE only
    admin: set[int] = field(default_factory=set)  # roles someone in the closure holds ADMIN on

    def privileged(self) -> set[int]:
        """Every role whose privileges the start role can use, by inheritance or SET ROLE."""
        return set(self.inherited) | set(self.via_set)


def _bfs(starts: Iterable[tuple[int, list[int]]], adjacency: dict[int, list[int]]) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    queue: deque[int] = deque()
    for oid, path in starts:
        if oid not in seen:
            seen[oid] = path
            queue.append(oid)
    while queue:
        v = queue.popleft()
        for w in adjacency.get(v, []):
            if w not in seen:
                seen[w] = [*seen[v], w]
                queue.append(w)
    return seen


def closure(start: int, edges: list[Edge], names: dict[int, str]) -> Closure:
    """Walk the edges from `start`; neighbours in name order so that paths are stable."""

    def adjacency(keep: str) -> dict[int, list[int]]:
        adj: dict[int, list[int]] = {}
        for e in edges:
            if keep == "any" or (keep == "inherit" and e.inherit) or (keep == "set" and e.set_role):
                adj.setdefault(e.member, []).append(e.role)
        for targets in adj.values():
            targets.sort(key=lambda oid: (names.get(oid, ""), oid))
        return adj

    c = Closure(start=start)
    c.reachable = _bfs([(start, [start])], adjacency("any"))
    inherit = adjacency("inherit")
    c.inherited = _bfs([(start, [start])], inherit)
    c.settable = _bfs([(start, [start])], adjacency("set"))
    after_set = _bfs(sorted(c.settable.items(), key=lambda kv: len(kv[1])), inherit)
    c.via_set = {oid: path for oid, path in after_set.items() if oid not in c.inherited}
    c.admin = {e.role for e in edges if e.admin and e.member in c.reachable}
    return c
