"""Helpers the tests share: real servers (hub, PostgreSQL), raw wire formats, test data."""
