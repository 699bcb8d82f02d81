"""HTTP server for the world's COGs, with Range requests and a transfer counter.

Cloud-optimised reads need ``Range`` (206 Partial Content); Python's http.server ignores
it and would send whole files. Starlette's ``StaticFiles`` answers single and multiple
ranges, HEAD and If-Range, so this module only adds a counter of bytes and requests per
path (``GET /_eomae/stats``, ``POST /_eomae/stats/reset``) that lets tests and benchmarks
prove a windowed read fetched only part of a file. An optional latency per request
(``$EOMAE_COG_LATENCY_MS``) stands in for object storage a continent away: on localhost a
read costs CPU only, on Planetary Computer's blob storage each request also waits tens of
milliseconds, which is what concurrent readers hide and sequential ones pay
(``eomae bench ingest --cog-latency-ms``).

Run under uvicorn as ``python -m uvicorn infra.services.cog_server:create_app --factory``
with the directory to serve in ``$EOMAE_COG_ROOT``; ``CogServer`` does that.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.services.process import UvicornServer

logger = logging.getLogger(__name__)

ROOT_ENV = "EOMAE_COG_ROOT"
LATENCY_ENV = "EOMAE_COG_LATENCY_MS"
SERVICE_PREFIX = "/_eomae/"  # the server's own routes: neither counted nor delayed
STATS_PATH = SERVICE_PREFIX + "stats"


class TransferStats:
    """Requests and response-body bytes per URL path (the server is one process)."""

    def __init__(self) -> None:
        self.requests: defaultdict[str, int] = defaultdict(int)
        self.bytes_sent: defaultdict[str, int] = defaultdict(int)

    def as_json(self) -> dict[str, object]:
        """Totals plus per-path counts."""
        return {
            "requests": sum(self.requests.values()),
            "bytes_sent": sum(self.bytes_sent.values()),
            "paths": {
                p: {"requests": n, "bytes_sent": self.bytes_sent[p]}
                for p, n in sorted(self.requests.items())
            },
        }

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.requests.clear()
        self.bytes_sent.clear()


class CountingMiddleware:
    """Pure ASGI middleware counting body bytes actually sent (206 bodies included)."""

    def __init__(self, app: ASGIApp, stats: TransferStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, counting what goes out (the stats routes are not counted)."""
        if scope["type"] != "http" or scope["path"].startswith(SERVICE_PREFIX):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        self.stats.requests[path] += 1

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.stats.bytes_sent[path] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting_send)


class LatencyMiddleware:
    """Holds each file request `seconds` before answering; requests wait concurrently."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Sleep (without blocking other requests), then pass the request on."""
        if scope["type"] == "http" and not scope["path"].startswith(SERVICE_PREFIX):
            await asyncio.sleep(self.seconds)
        await self.app(scope, receive, send)


def create_app(root: Path | None = None, latency_ms: float | None = None) -> Starlette:
    """The ASGI app serving ``root`` (default ``$EOMAE_COG_ROOT``) read-only.

    ``latency_ms`` (default ``$EOMAE_COG_LATENCY_MS``, else 0) delays every file request.
    """
    directory = Path(root) if root is not None else Path(os.environ[ROOT_ENV])
    if latency_ms is None:
        latency_ms = float(os.environ.get(LATENCY_ENV) or 0)
    if latency_ms < 0:
        raise ValueError(f"latency {latency_ms} ms must be >= 0")
    stats = TransferStats()

    async def get_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats.as_json())

    async def reset_stats(request: Request) -> JSONResponse:
        stats.reset()
        return JSONResponse(stats.as_json())

    app = Starlette(
        routes=[
            Route(STATS_PATH, get_stats, methods=["GET"]),
            Route(f"{STATS_PATH}/reset", reset_stats, methods=["POST"]),
            # follow_symlink: a world may link data it shares with another world.
            Mount("/", StaticFiles(directory=directory, follow_symlink=True)),
        ]
    )
    if latency_ms > 0:
        app.add_middleware(LatencyMiddleware, seconds=latency_ms / 1000)
    app.add_middleware(CountingMiddleware, stats=stats)
    return app


class CogServer(UvicornServer):
    """The COG server as a uvicorn child process on 127.0.0.1.

    Args:
        root: directory to serve (the world); ``WORLD/a/b.tif`` is at ``{url}/a/b.tif``.
        port: TCP port; must be free.
        log_path: uvicorn's log file.
        latency_ms: added to every file request (emulated remote storage); 0 for none.
    """

    NAME = "COG server"
    APP = "infra.services.cog_server:create_app"
    HEALTH_PATH = STATS_PATH

    def __init__(self, root: Path, port: int, log_path: Path, latency_ms: float = 0.0) -> None:
        self.root = Path(root).absolute()
        self.latency_ms = latency_ms
        super().__init__(port, log_path, cwd=self.root)

    def environment(self) -> dict[str, str]:
        """The directory to serve, its latency, and a PYTHONPATH under which ``infra`` imports."""
        return {**os.environ, ROOT_ENV: str(self.root), LATENCY_ENV: str(self.latency_ms),
                "PYTHONPATH": _pythonpath()}  # fmt: skip


def _pythonpath() -> str:
    """PYTHONPATH that lets a child import ``infra`` even from a source checkout."""
    repo_root = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return f"{repo_root}{os.pathsep}{existing}" if existing else repo_root
