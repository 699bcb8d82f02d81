"""Planetary Computer SAS tokens: fetch them, cache them, append them to blob hrefs.

This module owns the process's token cache. Hrefs in Azure Blob Storage
(`https://{account}.blob.core.windows.net/{container}/...`) get `?{token}` appended, one
token per container; every other href, and one that is already signed, passes through.
The token endpoint and subscription key come from planetary_computer's settings
(`PC_SDK_SAS_URL`, `PC_SDK_SUBSCRIPTION_KEY`), so a test can point it at a local server.

Fetches are bounded: a timeout on connect and read, a few retries with jittered backoff,
then `TokenError`. Threads needing the same container's token share one fetch, and a
failed fetch is remembered briefly so that a unit's other reads fail at once with it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import requests
from planetary_computer.settings import Settings
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

BLOB_DOMAIN = ".blob.core.windows.net"
PUBLIC_ACCOUNTS = frozenset({"ai4edatasetspublicassets"})  # thumbnails; PC never signs them
SIGNED_KEYS = frozenset({"st", "se", "sp"})  # SAS query parameters: already signed

# Worst case: no attempt starts after RETRY_BUDGET_S, and one takes at most connect + read
# timeouts, so about 15 + 8 = 23 s. A refused connection fails after the waits, <= 7 s.
TIMEOUT_S = (3.0, 5.0)  # connect, read
ATTEMPTS = 4
RETRY_BUDGET_S = 15.0
WAIT = wait_random_exponential(multiplier=1, max=4)  # jittered: workers do not sync up
REFRESH_MARGIN = timedelta(minutes=5)  # a token must outlive the reads it signs
FAILURE_TTL_S = 30.0  # the other reads of a unit fail with the first one's error
# A token this young is kept by `invalidate`: it was just re-fetched after another thread's
# 403, and a fresh token that is refused would only be refused again.
INVALIDATE_GRACE_S = 10.0


class TokenError(RuntimeError):
    """No SAS token could be had; the message names the token URL, never a secret."""


@dataclass(frozen=True)
class Token:
    """A SAS token (a query string without the `?`) and when it expires."""

    token: str
    expiry: datetime
    fetched: float = field(default_factory=time.monotonic, compare=False)

    def fresh(self) -> bool:
        """Whether it is still valid for longer than REFRESH_MARGIN."""
        return self.expiry - datetime.now(UTC) > REFRESH_MARGIN


@dataclass(frozen=True)
class _Failure:
    message: str
    at: float  # time.monotonic()


class TokenCache:
    """Tokens by token URL; one lock per URL, so concurrent callers share one fetch."""

    def __init__(self) -> None:
        self._entries: dict[str, Token | _Failure] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()  # guards _locks

    def _lock(self, url: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(url, threading.Lock())

    def get(self, url: str) -> Token:
        """The cached token for `url` if fresh, else a new one (TokenError if none)."""
        with self._lock(url):  # while one thread fetches, the others wait here for its result
            entry = self._entries.get(url)
            if isinstance(entry, Token) and entry.fresh():
                return entry
            if isinstance(entry, _Failure) and time.monotonic() - entry.at < FAILURE_TTL_S:
                raise TokenError(entry.message)
            try:
                token = _fetch(url)
            except TokenError as e:
                self._entries[url] = _Failure(str(e), time.monotonic())
                raise
            self._entries[url] = token
            return token

    def invalidate(self, url: str) -> None:
        """Forget the token for `url` unless it is younger than INVALIDATE_GRACE_S."""
        with self._lock(url):
            entry = self._entries.get(url)
            if isinstance(entry, Token) and time.monotonic() - entry.fetched < INVALIDATE_GRACE_S:
                return
            self._entries.pop(url, None)

    def clear(self) -> None:
        """Forget every token and failure (tests start from a cold cache)."""
        self._entries.clear()


TOKENS = TokenCache()


def sign(href: str) -> str:
    """`href` with its container's SAS token appended if it is an unsigned blob href."""
    url = _token_url(href)
    if url is None:
        return href
    token = TOKENS.get(url).token
    return f"{href}{'&' if urlparse(href).query else '?'}{token}"


def invalidate(href: str) -> None:
    """Drop the cached token of `href`'s container (after a 403: the token has expired).

    Threads that all got a 403 with the same token cause one new fetch, not one each.
    """
    url = _token_url(href, signed_too=True)
    if url is not None:
        TOKENS.invalidate(url)


def _token_url(href: str, signed_too: bool = False) -> str | None:
    """The token endpoint for `href`'s container, or None if `href` needs no token."""
    parsed = urlparse(href)
    host = parsed.hostname or ""
    if parsed.scheme != "https" or not host.endswith(BLOB_DOMAIN):
        return None
    account = host.removesuffix(BLOB_DOMAIN)
    container = parsed.path.lstrip("/").split("/", 1)[0]
    if account in PUBLIC_ACCOUNTS or not container:
        return None
    if not signed_too and SIGNED_KEYS & parse_qs(parsed.query).keys():
        return None
    return f"{str(Settings.get().sas_url).rstrip('/')}/{account}/{container}"


def _transient(e: BaseException) -> bool:
    """Worth another try: no answer, or a busy or failing service (429, 5xx)."""
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return e.response.status_code == 429 or e.response.status_code >= 500
    return isinstance(e, requests.ConnectionError | requests.Timeout)


def _cause(e: BaseException | None) -> str:
    """The reason behind a requests error ("... Connection refused"), not its wrapping."""
    reason = getattr(e.args[0], "reason", None) if e is not None and e.args else None
    return str(reason or e)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("token request failed, attempt %d: %s", state.attempt_number, _cause(error))


def _fetch(url: str) -> Token:
    """One token from the endpoint `url`, with bounded retries."""
    key = Settings.get().subscription_key
    headers = {"Ocp-Apim-Subscription-Key": key} if key else {}
    retrying = Retrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(ATTEMPTS) | stop_before_delay(RETRY_BUDGET_S),
        wait=WAIT,
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                response = requests.get(url, headers=headers, timeout=TIMEOUT_S)
                response.raise_for_status()
    except requests.HTTPError as e:
        if _transient(e):
            raise TokenError(f"token service unreachable: {url}: {e}") from e
        raise TokenError(f"token service refused: {url}: {e}") from e  # a bad key, say
    except requests.RequestException as e:
        raise TokenError(f"token service unreachable: {url}: {_cause(e)}") from e
    try:
        body = response.json()
        expiry = datetime.fromisoformat(body["msft:expiry"])
        token = Token(str(body["token"]), expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC))
    except (ValueError, KeyError, TypeError) as e:
        raise TokenError(f"token service answered without a token: {url}: {e!r}") from e
    log.info("fetched a SAS token from %s, valid until %s", url, token.expiry.isoformat())
    return token
