"""The security suite: the real API on PostgreSQL, tried as an attacker and as a careless client would."""

from tests.integration.api.conftest import Client, client, mdmq  # noqa: F401  (the API's fixtures)
