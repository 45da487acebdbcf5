"""rolecall: just-in-time PostgreSQL role access, approved in Slack, run on Temporal."""
