"""stac-fastapi-pgstac, the STAC API Planetary Computer runs, as a uvicorn child process.

Read-only: the search extensions ingest relies on (query, sort, fields, filter,
pagination) plus collection search, and no transactions; the world is loaded straight
into pgstac by ``catalog_loader`` instead.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from infra.services.process import ChildProcess, check_port_free, wait_http_ready

logger = logging.getLogger(__name__)

READ_EXTENSIONS = ["query", "sort", "fields", "filter", "pagination", "collection_search"]


class StacApiServer:
    """stac-fastapi-pgstac on 127.0.0.1, reading the pgstac database at ``pg_port``.

    Args:
        port: TCP port of the API; must be free.
        pg_port: port of the local PostgreSQL (on 127.0.0.1).
        pg_user: role to connect as (trusted, so the password is a placeholder).
        pg_database: database holding the pgstac schema.
        log_path: uvicorn's log file.
        workdir: working directory; the API's settings read a ``.env`` file from it, so
            it must be one we own rather than wherever the user happens to be.
    """

    def __init__(
        self,
        port: int,
        pg_port: int,
        pg_user: str,
        pg_database: str,
        log_path: Path,
        workdir: Path,
    ) -> None:
        self.port = port
        self.pg_port = pg_port
        self.pg_user = pg_user
        self.pg_database = pg_database
        self.log_path = log_path
        self.workdir = workdir
        self._process: ChildProcess | None = None

    @property
    def url(self) -> str:
        """Landing page URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of uvicorn while running."""
        return self._process.pid if self._process is not None else None

    def environment(self) -> dict[str, str]:
        """Environment for the API (names from ``stac_fastapi.pgstac.config``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGUSER=self.pg_user,
            PGPASSWORD="trust",  # Required by the settings; the cluster trusts 127.0.0.1.
            PGHOST="127.0.0.1",
            PGPORT=str(self.pg_port),
            PGDATABASE=self.pg_database,
            ENABLED_EXTENSIONS=",".join(READ_EXTENSIONS),
            ENABLE_TRANSACTIONS_EXTENSIONS="false",
            STAC_FASTAPI_TITLE="eomae sample world",
            STAC_FASTAPI_DESCRIPTION="Local STAC API serving the eomae sample world",
            STAC_FASTAPI_LANDING_ID="eomae-sample-world",
        )
        return env

    def spawn(self) -> None:
        """Start uvicorn without waiting for it (see ``wait_ready``)."""
        check_port_free(self.port, "STAC API")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app",
            "--factory", "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "info",
        ]  # fmt: skip
        self._process = ChildProcess(
            "STAC API", argv, self.log_path, env=self.environment(), cwd=self.workdir
        )
        self._process.start()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the API answers with a working database connection."""
        assert self._process is not None, "spawn() first"
        # /_mgmt/health, unlike /_mgmt/ping, only answers 200 once pgstac is reachable.
        wait_http_ready(f"{self.url}/_mgmt/health", self._process, timeout)
        logger.info("STAC API at %s", self.url)

    def stop(self) -> None:
        """Stop uvicorn; idempotent."""
        if self._process is not None:
            self._process.stop()
            self._process = None
