"""Opening a STAC API and searching it: Planetary Computer by default, or any STAC API URL.

Hrefs are not signed here: a Planetary Computer SAS token expires, so ingest signs each
href just before it opens it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Protocol, TypedDict, Unpack

import pystac
import pystac_client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import DoesNotConformTo
from urllib3.util.retry import Retry

PLANETARY_COMPUTER = "planetary-computer"
PLANETARY_COMPUTER_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"

# Every request to the API (open, collections, each search page; POST included): retry
# 429/5xx and dropped connections with exponential backoff and jitter, bounded (6 tries,
# under 10 s of waiting in all; Retry-After honoured). A refused connection is retried
# twice only, so an unreachable catalog fails fast.
RETRY = Retry(
    total=5,
    connect=2,
    backoff_factor=0.25,
    backoff_jitter=0.5,
    backoff_max=8,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=None,
    respect_retry_after_header=True,
)
TIMEOUT_S = (10, 60)  # connect, read


class CatalogError(RuntimeError):
    """The catalog cannot be reached or does not serve what was asked for."""


def catalog_url(catalog: str) -> str:
    """Resolve the catalog name `planetary-computer` or pass a STAC API URL through."""
    return PLANETARY_COMPUTER_URL if catalog == PLANETARY_COMPUTER else catalog


class Filters(TypedDict, total=False):
    """A search's filters, as `Catalog.search` takes them."""

    bbox: Sequence[float] | None
    datetime: str | None
    max_cloud_cover: float | None
    sortby: str | None
    limit: int


class Searchable(Protocol):
    """What planning asks of a catalog: a live one (`Catalog`) or a snapshot of one."""

    @property
    def url(self) -> str:
        """Where the items come from, for messages."""
        ...

    def collections(self) -> frozenset[str]:
        """Ids of the collections there are."""
        ...

    def search(self, collection: str, **filters: Unpack[Filters]) -> list[pystac.Item]:
        """The items of `collection` matching the filters (see `Catalog.search`)."""
        ...


class Catalog:
    """A STAC API opened once: searches follow every page; its collections are listed once.

    Planetary Computer's /collections document describes every collection it has, so it
    is fetched on the first search only, not before each one.
    """

    def __init__(self, client: pystac_client.Client) -> None:
        self.client = client
        self._collections: frozenset[str] | None = None

    @property
    def url(self) -> str:
        """The API's root URL."""
        return str(self.client.self_href)

    def collections(self) -> frozenset[str]:
        """Ids of the collections the API serves (one request, then remembered)."""
        if self._collections is None:
            try:
                self._collections = frozenset(c.id for c in self.client.get_collections())
            except APIError as e:
                raise CatalogError(f"cannot list the collections of {self.url}: {e}") from e
        return self._collections

    def search(
        self,
        collection: str,
        *,
        bbox: Sequence[float] | None = None,
        datetime: str | None = None,
        max_cloud_cover: float | None = None,
        sortby: str | None = None,
        limit: int = 100,
    ) -> list[pystac.Item]:
        """All items of `collection` matching the filters, following every result page.

        `max_cloud_cover` keeps items at or under it and items without `eo:cloud_cover`.
        """
        if collection not in self.collections():
            raise CatalogError(
                f"collection {collection!r} not in {self.url}; it has: {sorted(self.collections())}"
            )
        kwargs: dict[str, Any] = {"collections": [collection], "limit": limit}
        if bbox is not None:
            kwargs["bbox"] = list(bbox)
        if datetime is not None:
            kwargs["datetime"] = datetime
        if max_cloud_cover is not None:
            # Items that state no cloud cover come too (a `query` would drop them without
            # a word): the caller decides, and says, what becomes of them.
            cloud = {"property": "eo:cloud_cover"}
            kwargs["filter"] = {
                "op": "or",
                "args": [
                    {"op": "<=", "args": [cloud, max_cloud_cover]},
                    {"op": "isNull", "args": [cloud]},
                ],
            }
            kwargs["filter_lang"] = "cql2-json"
        if sortby is not None:
            kwargs["sortby"] = sortby
        try:
            with warnings.catch_warnings():
                # stac-fastapi announces sort as STAC API 1.1; pystac-client knows 1.0's URI.
                warnings.simplefilter("ignore", DoesNotConformTo)
                return list(self.client.search(**kwargs).items())
        except APIError as e:
            raise CatalogError(f"search of {collection!r} failed: {e}") from e


def open_catalog(catalog: str) -> Catalog:
    """Open a STAC API; fail with a message naming the URL when it cannot be reached."""
    url = catalog_url(catalog)
    try:
        client = pystac_client.Client.open(
            url, stac_io=StacApiIO(max_retries=RETRY), timeout=TIMEOUT_S
        )
    except (APIError, OSError, ValueError, pystac.STACError) as e:
        raise CatalogError(f"cannot open STAC API {url}: {e}") from e
    return Catalog(client)
