"""All local services for one sample world, started and stopped together."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType

from infra.services.catalog_loader import LoadResult, load_world, open_world
from infra.services.cog_server import CogServer
from infra.services.postgres import PostgresCluster
from infra.services.process import (
    ServiceError,
    check_port_free,
    free_port,
    port_is_free,
    timed,
)
from infra.services.stac_api import StacApiServer

logger = logging.getLogger(__name__)


class LocalServices:
    """PostgreSQL + pgstac, stac-fastapi-pgstac and a COG server for ``world_dir``.

    State (the cluster, logs) lives in ``state_dir`` and is reused by the next start, so
    only the first start pays for initdb, migrations and loading the world. Every
    service is a child process bound to 127.0.0.1 that also dies if we are killed.

    Args:
        world_dir: a sample world (``world.json``, ``stac/catalog.json``, ``data/``).
        state_dir: where the services keep their data and logs.
        stac_port: port of the STAC API, or None for a free one.
        cog_port: port of the COG server, or None for a free one.
        cog_latency_ms: delay added to every COG request (remote storage, emulated).

    Example::

        with LocalServices(world, Path("runs/services")) as svc:
            Client.open(svc.stac_url).search(collections=["sentinel-2-l2a"])
    """

    def __init__(
        self,
        world_dir: Path,
        state_dir: Path,
        stac_port: int | None = None,
        cog_port: int | None = None,
        cog_latency_ms: float = 0.0,
    ) -> None:
        self.world_dir = Path(world_dir)
        self.state_dir = Path(state_dir).absolute()
        self._requested_ports = {"STAC API": stac_port, "COG server": cog_port}
        self.cog_latency_ms = cog_latency_ms
        # Automatically chosen ports are kept, so a restarted object keeps its URLs.
        self._ports: dict[str, int] = {}
        self.postgres = PostgresCluster(
            self.state_dir / "pgdata", log_path=self.state_dir / "logs" / "postgres.log"
        )
        self.timings: dict[str, float] = {}
        self.load_result: LoadResult | None = None
        self._cog: CogServer | None = None
        self._api: StacApiServer | None = None

    @property
    def stac_url(self) -> str:
        """STAC API root, e.g. ``http://127.0.0.1:8081``."""
        return f"http://127.0.0.1:{self._port('STAC API')}"

    @property
    def cog_url(self) -> str:
        """COG server root; ``WORLD/data/x.tif`` is served at ``{cog_url}/data/x.tif``."""
        return f"http://127.0.0.1:{self._port('COG server')}"

    @property
    def running(self) -> bool:
        """Whether start() completed and stop() has not been called since."""
        return self._api is not None

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of the running services."""
        found = {
            "postgres": self.postgres.pid,
            "stac_api": self._api.pid if self._api else None,
            "cog_server": self._cog.pid if self._cog else None,
        }
        return {name: pid for name, pid in found.items() if pid is not None}

    def start(self) -> LocalServices:
        """Start everything and load the world; on any failure nothing is left running."""
        if self.running:
            return self
        self.timings = {}
        started = time.perf_counter()
        world = open_world(self.world_dir)  # Fail on a wrong directory before anything runs.
        self._choose_ports()
        logs = self.state_dir / "logs"
        try:
            # uvicorn boots in the background while PostgreSQL starts and the world loads.
            self._cog = CogServer(world.root, self._ports["COG server"], logs / "cog-server.log",
                                  self.cog_latency_ms)  # fmt: skip
            self._cog.spawn()
            self.postgres.start()
            self.timings.update(self.postgres.timings)
            self._api = StacApiServer(
                self._ports["STAC API"],
                pg_port=self._pg_port(),
                pg_user=self.postgres.superuser,
                pg_database=self.postgres.database,
                log_path=logs / "stac-api.log",
                workdir=self.state_dir,
            )
            self._api.spawn()
            with timed(self.timings, "load_world", logger):
                self.load_result = load_world(self.postgres.dsn(), world, self.cog_url)
            with timed(self.timings, "cog_server.ready", logger):
                self._cog.wait_ready()
            with timed(self.timings, "stac_api.ready", logger):
                self._api.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = round(time.perf_counter() - started, 3)
        logger.info(
            "local services up in %.1f s: STAC API %s, COG server %s (state %s)",
            self.timings["total"], self.stac_url, self.cog_url, self.state_dir,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """Stop every service (API first, database last); safe to call repeatedly."""
        for server in (self._api, self._cog):
            if server is not None:
                server.stop()
        self._api = self._cog = None
        self.postgres.stop()

    def __enter__(self) -> LocalServices:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _choose_ports(self) -> None:
        """Check requested ports (clear error if busy) and pick free ones for the rest."""
        requested = [p for p in self._requested_ports.values() if p is not None]
        if len(set(requested)) < len(requested):
            raise ServiceError(f"the STAC API and the COG server cannot share port {requested[0]}")
        for what, port in self._requested_ports.items():
            if port is not None:
                check_port_free(port, what)
                self._ports[what] = port
                continue
            previous = self._ports.get(what)
            if previous is not None and port_is_free(previous):
                continue
            taken = set(self._ports.values())
            self._ports[what] = next(p for p in iter(free_port, None) if p not in taken)

    def _port(self, what: str) -> int:
        if what not in self._ports:
            raise ServiceError(f"the {what} has no port yet; call start() first")
        return self._ports[what]

    def _pg_port(self) -> int:
        assert self.postgres.port is not None
        return self.postgres.port
