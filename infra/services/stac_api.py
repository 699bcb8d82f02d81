"""stac-fastapi-pgstac, the STAC API Planetary Computer runs, as a uvicorn child process.

Read-only: the search extensions ingest relies on (query, sort, fields, filter,
pagination) plus collection search, and no transactions; the world is loaded straight
into pgstac by ``catalog_loader`` instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from infra.services.process import UvicornServer

logger = logging.getLogger(__name__)

READ_EXTENSIONS = ["query", "sort", "fields", "filter", "pagination", "collection_search"]


class StacApiServer(UvicornServer):
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

    NAME = "STAC API"
    APP = "stac_fastapi.pgstac.app:create_app"
    # /_mgmt/health, unlike /_mgmt/ping, only answers 200 once pgstac is reachable.
    HEALTH_PATH = "/_mgmt/health"
    LOG_LEVEL = "info"

    def __init__(
        self,
        port: int,
        pg_port: int,
        pg_user: str,
        pg_database: str,
        log_path: Path,
        workdir: Path,
    ) -> None:
        super().__init__(port, log_path, cwd=workdir)
        self.pg_port = pg_port
        self.pg_user = pg_user
        self.pg_database = pg_database

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
