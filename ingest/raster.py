"""Reading remote rasters into a target grid.

Signing just before each read, GDAL settings for COGs over HTTP, retries with backoff.
Mosaics of several items are `ingest.mosaic`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from ingest import signing
from ingest.grid import Grid

log = logging.getLogger(__name__)
T = TypeVar("T")

# COGs over HTTP: never list directories, read headers in one go, merge adjacent ranges,
# let GDAL itself retry 429/5xx, keep the block cache bounded per process.
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_CACHEMAX": "256",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "16000000",
}
# Not worth retrying as is; 403 (an expired token) is handled by re-signing instead.
_PERMANENT = re.compile(r"HTTP response code: (400|401|403|404|410)|not recognized as|No such file")
# What a SAS query is made of: letters, digits and %-escapes (its ':' and '/' are escaped),
# so a ':' or a quote after it ends it. `(?!<redacted>)`: a second pass keeps the first.
_QUERY_CHARS = r"[\w%=&.+~/-]*"
_QUERY = re.compile(r"\?(?!<redacted>)" + _QUERY_CHARS)
_ENCODED_QUERY = re.compile(r"%3F(?!<redacted>)" + _QUERY_CHARS, re.IGNORECASE)  # %3F is '?'
# The signature and the signing key's fields, wherever they stand (after a space, encoded).
_SECRET = re.compile(r"(?<![\w%])(sig|skoid|sktid|skt|ske|sks|skv)(=|%3D)(?!<redacted>)[\w%.+~/-]*",
                     re.IGNORECASE)  # fmt: skip


class _RedactFilter(logging.Filter):
    """Strip query strings (SAS tokens) from a log record: GDAL's messages quote URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


_REDACT_FILTER = _RedactFilter()


def configure_gdal() -> None:
    """Apply GDAL_ENV through the environment, once per process (threads share it).

    Environment variables rather than rasterio.Env, whose settings are per thread; values
    the user exported win. Also redacts every rasterio logger (GDAL's retry warnings
    quote the signed URL).
    """
    for key, value in GDAL_ENV.items():
        os.environ.setdefault(key, value)
    for name in list(logging.root.manager.loggerDict):
        if name == "rasterio" or name.startswith("rasterio."):
            logger = logging.getLogger(name)
            if _REDACT_FILTER not in logger.filters:
                logger.addFilter(_REDACT_FILTER)


class ReadError(RuntimeError):
    """A raster could not be read; the message never contains a signed URL."""


def redact(text: str) -> str:
    """Strip query strings (SAS tokens) from a message or href, percent-encoded ones too."""
    text = _QUERY.sub("?<redacted>", text)
    text = _ENCODED_QUERY.sub(lambda m: m.group(0)[:3] + "<redacted>", text)
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)


def sign(href: str) -> str:
    """Sign a Planetary Computer blob href just before use; other hrefs pass through.

    Raises signing.TokenError (not a ReadError: it is no fault of this raster).
    """
    return signing.sign(href)


def _transient(e: BaseException) -> bool:
    return isinstance(e, RasterioIOError) and not _PERMANENT.search(str(e))


def _forbidden(e: BaseException) -> bool:
    return isinstance(e, RasterioIOError) and "HTTP response code: 403" in str(e)


@functools.cache
def _libgdal() -> ctypes.CDLL | None:
    """The GDAL library rasterio has loaded (the same instance, so the same caches)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgdal" in line}
    except OSError:
        paths = set()
    name = next(iter(sorted(paths)), None) or ctypes.util.find_library("gdal")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
    return lib


def _forget_failure(state: RetryCallState) -> None:
    """Before a retry: drop what GDAL cached about the href, failed open included.

    /vsicurl/ remembers per process that a file could not be opened, so without this
    every retry of a file whose first attempt hit a 5xx fails again without a request.
    """
    _forget(state.args[0])


def _forget(href: str) -> None:
    """Clear GDAL's /vsicurl/ cache (failed opens included) for one URL."""
    lib = _libgdal()
    if lib is not None and href.startswith(("http://", "https://")):
        lib.VSICurlPartialClearCache(f"/vsicurl/{href}".encode())


def clear_http_cache() -> None:
    """Clear GDAL's /vsicurl/ caches (blocks, file sizes, failures) in this process."""
    lib = _libgdal()
    if lib is not None:
        lib.VSICurlClearCache()


def _describe(e: BaseException) -> str:
    """GDAL's messages behind a rasterio error, outermost first, without repeats.

    rasterio's own message is often just "Read failed. See previous exception".
    """
    messages: list[str] = []
    cause: BaseException | None = e
    while cause is not None and len(messages) < 4:
        text = str(cause)
        if text and "See previous exception" not in text and not any(text in m for m in messages):
            messages.append(text)
        cause = cause.__cause__ or cause.__context__
    return "; ".join(messages) or type(e).__name__


# Transient failures (5xx, 429, dropped connections) are retried with backoff, the href's
# GDAL cache entry dropped before each retry; a function wrapped so takes the href first.
retry_transient = retry(
    retry=retry_if_exception(_transient),
    wait=wait_random_exponential(multiplier=0.5, max=8),
    stop=stop_after_attempt(5),
    before_sleep=_forget_failure,
    reraise=True,
)


@retry_transient
def _read_once(
    href: str, grid: Grid, resampling: Resampling, nodata: float | None, dtype: str
) -> tuple[np.ndarray, int]:
    """One attempt; returns the array and the bytes it decoded."""
    with rasterio.open(href) as src:
        if src.crs is None:
            raise ReadError(f"{redact(href)} has no CRS")
        with WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=resampling,
            nodata=nodata,
            dtype=dtype,
        ) as vrt:
            data = vrt.read(1)
    return data, data.nbytes


def read_signed(href: str, read: Callable[[str], T]) -> T:
    """`read(signed href)`: signed just before; on 403 (an expired token) re-signed once.

    Errors are ReadErrors naming the unsigned href only.
    """
    configure_gdal()
    try:
        try:
            return read(sign(href))
        except RasterioIOError as e:
            if not _forbidden(e):
                raise
            log.info("403 on %s: re-signing once", redact(href))
            signing.invalidate(href)
            signed = sign(href)
            _forget(signed)  # an unchanged URL (not PC's) would hit GDAL's cached failure
            return read(signed)
    except RasterioIOError as e:
        raise ReadError(f"cannot read {redact(href)}: {redact(_describe(e))}") from e


def read_into_grid(
    href: str,
    grid: Grid,
    resampling: Resampling,
    *,
    nodata: float | None,
    dtype: str,
) -> tuple[np.ndarray, int]:
    """Read band 1 of `href` warped onto `grid`; pixels it does not cover get `nodata`."""
    return read_signed(href, lambda signed: _read_once(signed, grid, resampling, nodata, dtype))


def first_valid(
    layers: Iterable[np.ndarray], grid: Grid, *, nodata: float, dtype: str
) -> np.ndarray:
    """Each pixel of `grid` from the first layer that has data there (nodata elsewhere)."""
    out = np.full((grid.height, grid.width), nodata, dtype=dtype)
    for layer in layers:
        empty = np.isnan(out) if np.isnan(nodata) else out == nodata
        out[empty] = layer[empty]
    return out
