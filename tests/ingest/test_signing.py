"""SAS-token signing against a real local token server (the one boundary we fake)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from planetary_computer.settings import Settings
from tenacity import wait_fixed

from ingest import signing
from ingest.plan import Unit
from ingest.run import process_unit
from ingest.signing import TokenError
from ingest.sources import sentinel2

BLOB = "https://acct.blob.core.windows.net/cont/S2A/B04.tif"
KEY = "secret-subscription-key"


class TokenServer(ThreadingHTTPServer):
    """Answers GET /{account}/{container} as Planetary Computer's SAS endpoint does."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/api/sas/v1/token"
        self.paths: list[str] = []
        self.keys: list[str | None] = []
        self.statuses: list[int] = []  # answered first, in order; then 200
        self.expiry = timedelta(hours=1)  # from now
        self.delay_s = 0.0  # so concurrent callers overlap the fetch
        self.lock = threading.Lock()

    def answer(self, path: str, key: str | None) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.paths.append(path)
            self.keys.append(key)
            n = len(self.paths)
            status = self.statuses.pop(0) if self.statuses else 200
        time.sleep(self.delay_s)
        expiry = (datetime.now(UTC) + self.expiry).strftime("%Y-%m-%dT%H:%M:%SZ")
        return status, {"msft:expiry": expiry, "token": f"sv=2021&se=x&sp=rl&sig=tok{n}"}


class _Handler(BaseHTTPRequestHandler):
    server: TokenServer

    def do_GET(self) -> None:
        status, body = self.server.answer(self.path, self.headers.get("Ocp-Apim-Subscription-Key"))
        data = json.dumps(body if status == 200 else {"error": "nope"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def _use_sas_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("PC_SDK_SAS_URL", url)
    Settings.get.cache_clear()  # planetary_computer reads the environment once


@pytest.fixture(autouse=True)
def cold_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no tokens and short retry waits, and leaves none behind."""
    monkeypatch.setattr(signing, "WAIT", wait_fixed(0.01))
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    signing.TOKENS.clear()
    Settings.get.cache_clear()
    yield
    signing.TOKENS.clear()
    Settings.get.cache_clear()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    srv = TokenServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    _use_sas_url(monkeypatch, srv.url)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """A token URL on a port nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/sas/v1/token"
    _use_sas_url(monkeypatch, url)
    return url


def test_blob_hrefs_get_their_container_token(server: TokenServer) -> None:
    assert signing.sign(BLOB) == f"{BLOB}?sv=2021&se=x&sp=rl&sig=tok1"
    assert server.paths == ["/api/sas/v1/token/acct/cont"]


@pytest.mark.parametrize(
    "href",
    [
        "http://127.0.0.1:8080/cog/S2A/B04.tif",  # the local COG server
        "https://example.com/cont/B04.tif",
        "/data/world/B04.tif",
        "https://ai4edatasetspublicassets.blob.core.windows.net/assets/thumb.png",
        f"{BLOB}?st=2024-01-01&se=2024-01-02&sp=rl&sig=abc",  # already signed
    ],
)
def test_other_hrefs_pass_through_without_a_request(server: TokenServer, href: str) -> None:
    assert signing.sign(href) == href
    assert server.paths == []


def test_the_subscription_key_is_sent(server: TokenServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", KEY)
    Settings.get.cache_clear()
    signing.sign(BLOB)
    assert server.keys == [KEY]


def test_concurrent_signs_share_one_fetch_per_container(server: TokenServer) -> None:
    server.delay_s = 0.2  # every thread asks while the first fetch is in flight
    hrefs = [f"https://acct.blob.core.windows.net/cont/B{i:02}.tif" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        signed = list(pool.map(signing.sign, hrefs))
    assert len(server.paths) == 1
    assert all(s.endswith("?sv=2021&se=x&sp=rl&sig=tok1") for s in signed)

    other = [f"https://acct.blob.core.windows.net/other/B{i:02}.tif" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(signing.sign, hrefs + other))
    assert sorted(server.paths) == [
        "/api/sas/v1/token/acct/cont",
        "/api/sas/v1/token/acct/other",
    ]


@pytest.mark.parametrize(
    ("expiry", "fetches"),
    [
        (timedelta(minutes=-1), 2),  # expired
        (signing.REFRESH_MARGIN - timedelta(seconds=30), 2),  # about to expire
        (timedelta(hours=1), 1),  # valid: reused
    ],
)
def test_tokens_are_refreshed_before_they_expire(
    server: TokenServer, expiry: timedelta, fetches: int
) -> None:
    server.expiry = expiry
    signing.sign(BLOB)
    signing.sign(BLOB)
    assert len(server.paths) == fetches


def test_invalidate_forces_a_new_token(
    server: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing, "INVALIDATE_GRACE_S", 0.0)
    assert signing.sign(BLOB).endswith("sig=tok1")
    signing.invalidate(BLOB)
    assert signing.sign(BLOB).endswith("sig=tok2")
    assert len(server.paths) == 2


def test_many_403s_on_one_token_cause_one_new_fetch(
    server: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing, "INVALIDATE_GRACE_S", 1.0)
    signing.sign(BLOB)
    time.sleep(1.1)  # the token is now old enough that a 403 means it went stale

    def after_403(href: str) -> str:
        signing.invalidate(href)
        return signing.sign(href)

    with ThreadPoolExecutor(16) as pool:
        signed = list(pool.map(after_403, [BLOB] * 16))
    assert len(server.paths) == 2
    assert all(s.endswith("sig=tok2") for s in signed)


def test_unreachable_token_service_fails_fast_and_clearly(
    closed_port_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", KEY)
    Settings.get.cache_clear()
    t0 = time.perf_counter()
    with pytest.raises(TokenError) as info:
        signing.sign(BLOB)
    assert time.perf_counter() - t0 < 30
    message = str(info.value)
    assert message.startswith(f"token service unreachable: {closed_port_url}/acct/cont: ")
    assert "refused" in message.lower()  # the cause
    assert KEY not in message


def test_a_silent_token_service_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "TIMEOUT_S", (0.5, 0.2))
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        _use_sas_url(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
        t0 = time.perf_counter()
        with pytest.raises(TokenError, match="^token service unreachable: .*timed out"):
            signing.sign(BLOB)
        assert time.perf_counter() - t0 < 5


def test_server_errors_are_retried(server: TokenServer) -> None:
    server.statuses = [500, 500]
    assert signing.sign(BLOB).endswith("sig=tok3")
    assert len(server.paths) == 3


def test_a_refusal_is_not_retried(server: TokenServer) -> None:
    server.statuses = [401]
    with pytest.raises(TokenError, match="^token service refused: .*401"):
        signing.sign(BLOB)
    assert len(server.paths) == 1


def test_a_failed_fetch_is_shared_by_concurrent_reads(server: TokenServer) -> None:
    server.statuses = [503] * 100
    errors = []

    def sign(href: str) -> None:
        try:
            signing.sign(href)
        except TokenError as e:
            errors.append(str(e))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(sign, [BLOB] * 16))
    assert len(errors) == 16
    assert all(e.startswith("token service unreachable: ") for e in errors)
    assert len(server.paths) == signing.ATTEMPTS  # one fetch with its retries, not 16


def _blob_unit() -> Unit:
    base = "https://acct.blob.core.windows.net"
    item_id = "S2B_MSIL2A_20230615T185919_R013_T10SEG_20230616T012345"
    assets = {
        key: {"href": f"{base}/sentinel2-l2/10/S/EG/2023/06/15/{item_id}/{key}.tif"}
        for key in (*sentinel2.BAND_NAMES, sentinel2.SCL_ASSET)
    }
    return Unit(
        unit_id="10SEG_20230615",
        mgrs_tile="10SEG",
        datetime="2023-06-15T18:59:19Z",
        baseline="05.09",
        cloud_cover=3.2,
        grid={"epsg": 32610, "left": 499_980.0, "top": 4_200_000.0, "width": 64, "height": 64},
        s2_item={"id": item_id, "assets": assets},
        dem_hrefs=[f"{base}/copernicus-dem/COP30_hh/Copernicus_DSM_COG_10_N37_00_W123_00_DEM.tif"],
        dem_items=["Copernicus_DSM_COG_10_N37_00_W123_00_DEM"],
        lc_hrefs=[
            f"{base}/esa-worldcover/v200/2021/map/ESA_WorldCover_10m_2021_v200_N36W123_Map.tif"
        ],
        lc_items=["ESA_WorldCover_10m_2021_v200_N36W123"],
    )


def test_a_unit_fails_cleanly_when_the_token_service_is_down(
    closed_port_url: str, tmp_path: object
) -> None:
    t0 = time.perf_counter()
    result = process_unit(_blob_unit(), str(tmp_path), chip_size=32, max_reads=4)
    assert result.status == "failed"
    assert "token service unreachable" in result.reason
    assert time.perf_counter() - t0 < 10
