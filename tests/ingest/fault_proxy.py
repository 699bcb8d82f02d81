"""A fault-injecting HTTP reverse proxy for the reliability tests.

One proxy on 127.0.0.1 fronts several upstreams by path prefix, e.g. ``/cog/...`` to the
COG server and everything else to the STAC API. It forwards method, headers (``Range``
included) and body, and returns status, headers and body as the upstream sent them
(206 + ``Content-Range`` for ranged reads). Upstream base URLs in JSON bodies are
rewritten to the proxy's, so STAC item hrefs and API links lead back through it.

A deterministic pseudo-random share of requests (``fail_rate``) is answered with 429, 500,
502, 503 or 504 instead of being forwarded. Whether a request fails depends only on the
seed, the request (method, path, query, ``Range``, body) and how often that same request
was seen before, not on thread timing, so a run sees the same faults every time and a
retried request eventually gets through.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import requests

FAULT_STATUSES = (429, 500, 502, 503, 504)
# Hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy recomputes.
_SKIP_HEADERS = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
    "content-encoding",
}  # fmt: skip


class FaultProxy:
    """Reverse proxy failing ~``fail_rate`` of requests; use as a context manager.

    Args:
        upstreams: path prefix -> upstream base URL, e.g. ``{"/cog": cog_url, "": stac_url}``.
        fail_rate: share of requests answered with one of ``FAULT_STATUSES``.
        seed: changes which requests fail.
    """

    def __init__(self, upstreams: Mapping[str, str], fail_rate: float = 0.2, seed: int = 0):
        # Longest prefix first, so "/cog" wins over "".
        self.upstreams = sorted(
            ((p.rstrip("/"), u.rstrip("/")) for p, u in upstreams.items()),
            key=lambda pu: -len(pu[0]),
        )
        self.fail_rate = fail_rate
        self.seed = seed
        self.forwarded: Counter[str] = Counter()  # per prefix
        self.failed: Counter[str] = Counter()  # per prefix
        self.statuses: Counter[int] = Counter()  # fault statuses sent
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url_for(self, upstream: str) -> str:
        """The proxy URL that fronts `upstream`."""
        for prefix, base in self.upstreams:
            if base == upstream.rstrip("/"):
                return self.url + prefix
        raise KeyError(upstream)

    def start(self) -> FaultProxy:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- decisions -----------------------------------------------------------------------

    def fault_for(self, key: str) -> int | None:
        """The status to fail this request with, or None to forward it."""
        with self._lock:
            nth = self._seen[key]
            self._seen[key] += 1
        digest = hashlib.sha256(f"{self.seed}|{key}|{nth}".encode()).digest()
        if int.from_bytes(digest[:4], "big") / 2**32 >= self.fail_rate:
            return None
        return FAULT_STATUSES[digest[4] % len(FAULT_STATUSES)]

    def route(self, path: str) -> tuple[str, str]:
        """(prefix, upstream URL) for a request path."""
        for prefix, base in self.upstreams:
            if path == prefix or path.startswith(prefix + "/") or prefix == "":
                return prefix, base + path[len(prefix) :]
        raise LookupError(path)

    def rewrite(self, body: bytes) -> bytes:
        """Upstream base URLs in a JSON body -> the proxy's."""
        text = body.decode("utf-8")
        for prefix, base in self.upstreams:
            # (?!\d): never touch a longer port number that starts with this one.
            text = re.sub(re.escape(base) + r"(?!\d)", self.url + prefix, text)
        return text.encode("utf-8")

    def session(self) -> requests.Session:
        """One upstream session per handler thread."""
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session  # type: ignore[no-any-return]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._proxy()

            def do_HEAD(self) -> None:  # noqa: N802
                self._proxy()

            def do_POST(self) -> None:  # noqa: N802
                self._proxy()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: thousands of requests per test

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                prefix, target = proxy.route(self.path)
                key = "|".join(
                    (self.command, self.path, self.headers.get("Range", ""),
                     hashlib.sha256(body).hexdigest())
                )  # fmt: skip
                status = proxy.fault_for(key)
                if status is not None:
                    with proxy._lock:
                        proxy.failed[prefix] += 1
                        proxy.statuses[status] += 1
                    self._reply(status, {"Content-Type": "text/plain"}, b"injected fault\n")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _SKIP_HEADERS}
                headers["Accept-Encoding"] = "identity"
                up = proxy.session().request(
                    self.command, target, headers=headers, data=body or None,
                    allow_redirects=False, timeout=60,
                )  # fmt: skip
                with proxy._lock:
                    proxy.forwarded[prefix] += 1
                out_headers = {
                    k: v for k, v in up.headers.items() if k.lower() not in _SKIP_HEADERS
                }
                content = up.content
                if "json" in up.headers.get("Content-Type", ""):
                    content = proxy.rewrite(content)
                if "Location" in out_headers:
                    out_headers["Location"] = proxy.rewrite(
                        out_headers["Location"].encode()
                    ).decode()
                length_header = None
                if self.command == "HEAD":
                    length_header = up.headers.get("Content-Length")
                self._reply(up.status_code, out_headers, content, length_header)

            def _reply(
                self,
                status: int,
                headers: Mapping[str, str],
                body: bytes,
                head_length: str | None = None,
            ) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", head_length or str(len(body)))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
