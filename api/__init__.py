"""The HTTP API (FastAPI): deployments, device reports, credentials, push status, health and metrics."""
