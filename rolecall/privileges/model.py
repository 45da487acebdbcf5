"""The result of `explain`: small, JSON-serialisable, and comparable between two snapshots.

Every list is sorted by a stable key, so two snapshots of an unchanged role compare equal
with `==`, and `diff(old, new)` can say exactly what the role gained in between (the
drift check at grant time compares what the approver saw with what is granted).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# The order privileges are listed in, everywhere (PostgreSQL's own GRANT order).
PRIVILEGE_ORDER = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "USAGE",
    "CREATE",
    "EXECUTE",
    "CONNECT",
    "TEMPORARY",
    "SET",
    "ALTER SYSTEM",
    "MAINTAIN",
]
_RANK = {p: i for i, p in enumerate(PRIVILEGE_ORDER)}


def privilege_rank(privilege: str) -> tuple[int, str]:
    return (_RANK.get(privilege, len(_RANK)), privilege)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Grant(_Model):
    """One privilege on one object.

    `database` is "" for cluster-wide objects (tablespaces, parameters); `schema_name` is ""
    for objects outside schemas (databases, languages, foreign servers, large objects...).
    """

    database: str = ""
    schema_name: str = ""
    kind: str
    name: str
    column: str = ""
    privilege: str
    grantable: bool = False
    holders: list[str]
    owner: str = ""  # the owner, when it is a role of the closure: it can do more than its ACL says
    security_definer: bool = False

    def key(self) -> tuple[str, str, str, str, str, tuple[int, str]]:
        """Identity of the privilege, whoever in the closure holds it."""
        return (
            self.database,
            self.schema_name,
            self.kind,
            self.name,
            self.column,
            privilege_rank(self.privilege),
        )


class Member(_Model):
    """A role reachable from the explained role through pg_auth_members."""

    role: str
    path: list[str]  # from the explained role to this one, both included
    access: Literal["inherited", "set_role_only", "membership_only"]
    set_role: bool  # the explained role may SET ROLE to it
    admin_option: bool = False  # a role of the closure may grant it to others
    already: bool = False  # with a login: the login already inherits it

    def key(self) -> str:
        return self.role


class Attribute(_Model):
    """A role attribute or predefined role found in the closure (the explained role included)."""

    role: str
    attribute: str  # SUPERUSER, CREATEROLE, BYPASSRLS, REPLICATION, LOGIN, CREATEDB, predefined role
    path: list[str]
    refused: bool  # rolecall's safety check refuses to lend a role that contains it

    def key(self) -> tuple[str, str]:
        return (self.role, self.attribute)


class PredefinedEffect(_Model):
    role: str
    effect: str
    access: Literal["inherited", "set_role_only"]
    path: list[str]

    def key(self) -> str:
        return self.role


class DefaultPrivilege(_Model):
    """A pg_default_acl entry: what objects `creator` creates later will grant to `grantee`.

    `receives`: the grantee is in the explained role's closure (it will gain privileges on
    objects created later); `creates`: the creator is (objects created as that role, after
    SET ROLE, are shared with the grantee).
    """

    database: str
    direction: Literal["receives", "creates"]
    creator: str
    schema_name: str = ""  # "" = every schema
    object_type: str  # tables, sequences, functions, types, schemas
    grantee: str  # "PUBLIC" for everyone
    privilege: str
    grantable: bool = False

    def key(self) -> tuple[str, str, str, str, str, str, tuple[int, str]]:
        return (
            self.database,
            self.direction,
            self.creator,
            self.schema_name,
            self.object_type,
            self.grantee,
            privilege_rank(self.privilege),
        )


class RlsTable(_Model):
    """A table with row-level security that the role can read or write."""

    database: str
    schema_name: str
    name: str
    privileges: list[str]
    forced: bool = False  # FORCE ROW LEVEL SECURITY: applies to the owner too
    bypass: Literal["", "owner"] = ""
    policies: list[str] = []  # the policies that apply to the role (or PUBLIC); none: no rows

    def key(self) -> tuple[str, str, str]:
        return (self.database, self.schema_name, self.name)


class Unreadable(_Model):
    database: str
    reason: str


Verdict = Literal["lendable", "lendable_by_unsafe_allowed", "refused"]


class Privileges(_Model):
    """What a login gains with a membership of `role` (only what `role` adds to `login` when set).

    Privileges PUBLIC holds are left out: every login has them already.
    """

    role: str
    server_version: int
    login: str = ""
    verdict: Verdict = "lendable"
    memberships: list[Member] = []
    grants: list[Grant] = []
    set_role_only: list[Grant] = []
    default_privileges: list[DefaultPrivilege] = []
    predefined: list[PredefinedEffect] = []
    attributes: list[Attribute] = []
    bypass_rls: list[str] = []  # roles of the closure with BYPASSRLS (used after SET ROLE)
    rls: list[RlsTable] = []
    lasting: list[str] = []  # owned objects, grant options: refused unless unsafe_allowed
    already_held: int = 0  # with a login: privileges of the role the login holds already
    databases: list[str] = []  # read
    unreadable: list[Unreadable] = []
    notes: list[str] = []

    def sort(self) -> Privileges:
        """Put every list in its stable order (in place); returns self."""
        self.memberships.sort(key=Member.key)
        self.grants.sort(key=Grant.key)
        self.set_role_only.sort(key=Grant.key)
        self.default_privileges.sort(key=DefaultPrivilege.key)
        self.predefined.sort(key=PredefinedEffect.key)
        self.attributes.sort(key=Attribute.key)
        self.rls.sort(key=RlsTable.key)
        self.bypass_rls.sort()
        self.databases.sort()
        self.unreadable.sort(key=lambda u: u.database)
        return self

    @property
    def empty(self) -> bool:
        """Grants nothing beyond what PUBLIC (or, with a login, the login) has."""
        return not (
            self.grants
            or self.set_role_only
            or self.predefined
            or self.attributes
            or self.rls
            or any(d.direction == "receives" for d in self.default_privileges)
        )


def gained_grants(before: list[Grant], after: list[Grant]) -> list[Grant]:
    """The grants of `after` that `before` lacks, or holds without the grant option."""
    had = {g.key(): g for g in before}
    return [g for g in after if g.key() not in had or (g.grantable and not had[g.key()].grantable)]


def diff(old: Privileges, new: Privileges) -> Privileges:
    """What `new` grants that `old` did not: the same model, holding only the gains.

    A privilege counts as gained when its object and privilege are new, or when it became
    grantable. Memberships, attributes and predefined roles count by role name. Metadata
    (verdict, databases read, unreadable ones, notes) is `new`'s.
    """

    def gained(before: list[Member], after: list[Member]) -> list[Member]:
        had = {m.role: m.access for m in before}
        return [m for m in after if had.get(m.role) != m.access]

    old_attrs = {a.key() for a in old.attributes}
    old_pre = {p.key(): p.access for p in old.predefined}
    old_defaults = {d.key() for d in old.default_privileges}
    old_rls = {r.key(): r for r in old.rls}
    out = new.model_copy(deep=True)
    out.memberships = gained(old.memberships, new.memberships)
    out.grants = gained_grants(old.grants, new.grants)
    out.set_role_only = gained_grants(old.grants + old.set_role_only, new.set_role_only)
    out.default_privileges = [d for d in new.default_privileges if d.key() not in old_defaults]
    out.predefined = [p for p in new.predefined if old_pre.get(p.key()) != p.access]
    out.attributes = [a for a in new.attributes if a.key() not in old_attrs]
    out.bypass_rls = sorted(set(new.bypass_rls) - set(old.bypass_rls))
    out.rls = [r for r in new.rls if old_rls.get(r.key()) != r]
    out.lasting = [x for x in new.lasting if x not in old.lasting]
    out.already_held = 0
    return out.sort()
