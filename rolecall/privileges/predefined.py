"""What PostgreSQL's predefined roles let a member do (PostgreSQL 15-17 documentation).

Their effects come from membership checks in the server, not from ACLs, so the catalogs
do not show them: this table does. They are inherited like any privilege.
"""

from __future__ import annotations

from rolecall.privileges.model import Grant

EFFECTS: dict[str, str] = {
    "pg_read_all_data": (
        "SELECT on every table, view and sequence in every database, USAGE on every schema "
        "(row-level security still applies)"
    ),
    "pg_write_all_data": (
        "INSERT, UPDATE and DELETE on every table, view and sequence in every database, "
        "USAGE on every schema (row-level security still applies)"
    ),
    "pg_read_all_settings": "read every configuration setting, even those only superusers see",
    "pg_read_all_stats": "read every pg_stat_* view, other sessions' queries included",
    "pg_stat_scan_tables": "run monitoring functions that take ACCESS SHARE locks on tables",
    "pg_monitor": (
        "read monitoring views and run monitoring functions "
        "(contains pg_read_all_settings, pg_read_all_stats and pg_stat_scan_tables)"
    ),
    "pg_signal_backend": "cancel the queries and end the sessions of other non-superuser roles",
    "pg_read_server_files": "read any file the server can read (COPY FROM a file, pg_read_file)",
    "pg_write_server_files": "write any file the server can write (COPY TO a file)",
    "pg_execute_server_program": "run any program as the server's operating-system user (COPY ... PROGRAM)",
    "pg_checkpoint": "run CHECKPOINT",
    "pg_use_reserved_connections": "use the connection slots kept by reserved_connections",
    "pg_create_subscription": "CREATE SUBSCRIPTION in the databases where it has CREATE",
    "pg_maintain": (
        "VACUUM, ANALYZE, CLUSTER, REFRESH MATERIALIZED VIEW, REINDEX and LOCK TABLE on every relation"
    ),
    "pg_database_owner": "everything the owner of the current database may do there",
}

_RELATIONS = {"table", "view", "materialized view", "sequence", "foreign table", "column"}
# Privileges a predefined role already gives on every object of a kind.
_COVERS: dict[str, dict[str, set[str]]] = {
    "pg_read_all_data": {"SELECT": _RELATIONS, "USAGE": {"schema"}},
    "pg_write_all_data": {
        "INSERT": _RELATIONS,
        "UPDATE": _RELATIONS,
        "DELETE": _RELATIONS,
        "USAGE": {"schema"},
    },
}


def effect(role: str) -> str:
    return EFFECTS.get(
        role, "a predefined role whose effect is not in rolecall's table: see the PostgreSQL docs"
    )


def covered(grant: Grant, predefined: set[str]) -> bool:
    """True if one of these predefined roles already gives this privilege on every such object."""
    return any(grant.kind in _COVERS.get(role, {}).get(grant.privilege, set()) for role in predefined)
