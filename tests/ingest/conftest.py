"""Ingest tests use the session fixtures of tests/conftest.py (`ingested`, `truth`, ...)."""
