"""What a membership of a role really grants, read from the catalogs (see rolecall/explain.py).

model: the pydantic result and `diff`; graph: the membership closure; catalog: the SQL;
predefined: what the pg_* roles do; render: the Slack line and the CLI text.
"""
