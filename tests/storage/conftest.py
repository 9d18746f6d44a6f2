"""Fixtures for the storage tests; the servers themselves live in storage_servers.py."""

from storage_servers import cache, file_server, http_client, moto_server  # noqa: F401
