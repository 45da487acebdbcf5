"""The engine floors: minimal workflows on the same dev server, worker settings and PostgreSQL."""
