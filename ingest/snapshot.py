"""A frozen catalog: the items a plan was made from, as STAC GeoParquet, searchable offline.

    recording = RecordingCatalog(open_catalog("planetary-computer"))
    plan = make_plan(cfg, recording)
    write_snapshot(recording.items(), "runs/x/ingest/catalog.parquet")
    ...
    plan_again = make_plan(cfg, SnapshotCatalog("runs/x/ingest/catalog.parquet"))

Every item any search returned while planning is kept (a superset of those the plan used),
so planning again from the snapshot sees what the live catalog showed, whatever the
catalog holds by then. The file is written with the `stac-geoparquet` package, so other
tools read it too. A search of the snapshot answers as the STAC API would for what the
planner asks: collection, bbox (item geometry intersects it), datetime interval,
`eo:cloud_cover` at most a limit or absent, sorted by cloud cover. Hrefs stay unsigned;
they are signed at read time as from a live catalog.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime as DateTime
from pathlib import Path
from typing import Any, Unpack

import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import stac_geoparquet.arrow as stac_arrow
from shapely import STRtree
from shapely.geometry import box, shape

from ingest.catalog import CatalogError, Filters, Searchable

SNAPSHOT_FILE = "catalog.parquet"  # under RUN/ingest/
ITEM_JSON = "eomae:item_json"  # a column beside stac-geoparquet's: each item's JSON as given


class RecordingCatalog:
    """A catalog that remembers every item its searches returned (see `items`)."""

    def __init__(self, catalog: Searchable) -> None:
        self.catalog = catalog
        self._seen: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def url(self) -> str:
        """The recorded catalog's URL."""
        return self.catalog.url

    def collections(self) -> frozenset[str]:
        """The recorded catalog's collections."""
        return self.catalog.collections()

    def search(self, collection: str, **filters: Unpack[Filters]) -> list[pystac.Item]:
        """The catalog's answer, remembered."""
        found = self.catalog.search(collection, **filters)
        for item in found:
            self._seen.setdefault((collection, item.id), item.to_dict(transform_hrefs=False))
        return found

    def items(self) -> list[dict[str, Any]]:
        """Every item seen, sorted by collection and id."""
        return [self._seen[k] for k in sorted(self._seen)]


def write_snapshot(items: Sequence[dict[str, Any]], path: Path | str) -> Path:
    """The items as STAC GeoParquet at `path` (written beside, then moved).

    Each row also keeps its item's JSON as it came (`ITEM_JSON`): GeoParquet's columns
    reorder properties and reformat datetimes, and a plan embeds its items, so only the
    original text plans byte-identically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = stac_arrow.parse_stac_items_to_arrow(list(items)).read_all()
    ids = table.column("id").to_pylist()
    if ids != [i["id"] for i in items]:
        raise CatalogError("stac-geoparquet reordered the items; the snapshot would be wrong")
    table = table.append_column(ITEM_JSON, pa.array([json.dumps(i) for i in items]))
    tmp = path.with_suffix(".partial")
    stac_arrow.to_parquet(table, tmp)
    tmp.replace(path)
    return path


def _without_nulls(value: Any) -> Any:
    """A value with the null fields GeoParquet's shared schema adds to objects taken out."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def read_snapshot(path: Path | str) -> list[dict[str, Any]]:
    """The item dicts of a snapshot (or of any STAC GeoParquet file).

    CatalogError naming the file when it is neither.
    """
    try:
        table = pq.read_table(path)
        if ITEM_JSON in table.column_names:
            return [json.loads(text) for text in table.column(ITEM_JSON).to_pylist()]
        return [_without_nulls(item) for item in stac_arrow.stac_table_to_items(table)]
    except (OSError, ValueError, KeyError) as e:
        raise CatalogError(f"{path} is not a catalog snapshot: {type(e).__name__}: {e}") from e


def _instant(text: str | None) -> DateTime | None:
    return DateTime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _interval(text: str) -> tuple[DateTime | None, DateTime | None]:
    """A STAC `a/b` datetime interval as (earliest, latest); None where open.

    A single instant (no "/") is open after it, as the snapshot has always answered;
    the planner sends closed intervals.
    """
    lo, _, hi = text.partition("/")
    return (
        None if lo in ("", "..") else _instant(lo),
        None if hi in ("", "..") else _instant(hi),
    )


@dataclass(frozen=True)
class _Indexed:
    """One collection's items in snapshot order, parsed once for every search.

    `tree` holds the item geometries (an item without one is in no bbox); `start`, `end`
    are each item's datetime or start/end range, `cloud` its `eo:cloud_cover`.
    """

    items: list[dict[str, Any]]
    tree: STRtree
    start: list[DateTime | None]
    end: list[DateTime | None]
    cloud: list[float | None]

    @classmethod
    def of(cls, items: list[dict[str, Any]]) -> _Indexed:
        """The index of these items (all of one collection)."""
        props = [i["properties"] for i in items]
        return cls(
            items=items,
            tree=STRtree([shape(i["geometry"]) if i.get("geometry") else None for i in items]),
            start=[_instant(p.get("start_datetime") or p.get("datetime")) for p in props],
            end=[_instant(p.get("end_datetime") or p.get("datetime")) for p in props],
            cloud=[p.get("eo:cloud_cover") for p in props],
        )

    def meets(self, i: int, earliest: DateTime | None, latest: DateTime | None) -> bool:
        """Whether item `i`'s time meets the interval; an item without a time meets none."""
        start, end = self.start[i], self.end[i]
        if earliest is not None and (end is None or end < earliest):
            return False
        return latest is None or (start is not None and start <= latest)

    def cloud_at_most(self, i: int, limit: float | None) -> bool:
        """The API's cloud filter: at most `limit`, or none stated (the planner decides)."""
        cloud = self.cloud[i]
        return limit is None or cloud is None or cloud <= limit


class SnapshotCatalog:
    """A catalog answered from a snapshot file, with no network (see the module doc).

    Each collection's geometries are indexed once (an STRtree), so a search costs the
    items it finds, not all the snapshot's: a plan of many tiles stays linear.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CatalogError(f"catalog snapshot {self.path} does not exist")
        self._items = read_snapshot(self.path)
        by_collection: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item in self._items:
            by_collection[item.get("collection", "")].append(item)
        self._collections = frozenset(by_collection)
        self._index = {name: _Indexed.of(items) for name, items in by_collection.items()}

    @property
    def url(self) -> str:
        """Where the snapshot is, for messages."""
        return f"snapshot {self.path}"

    def collections(self) -> frozenset[str]:
        """The collections the snapshot holds items of."""
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
        """The snapshot's items that a STAC API search with these filters returns.

        In snapshot order, or by cloud cover (then id; none stated last) with `sortby`.
        """
        if collection not in self._collections:
            raise CatalogError(f"collection {collection!r} not in {self.url}; it has: "
                               f"{sorted(self._collections)}")  # fmt: skip
        index = self._index[collection]
        if bbox is None:
            hits: Iterable[int] = range(len(index.items))
        else:  # the tree answers in no set order: snapshot order again
            hits = sorted(index.tree.query(box(*bbox), predicate="intersects").tolist())
        earliest, latest = _interval(datetime) if datetime is not None else (None, None)
        chosen = [
            i for i in hits
            if index.meets(i, earliest, latest) and index.cloud_at_most(i, max_cloud_cover)
        ]  # fmt: skip
        if sortby == "eo:cloud_cover":
            chosen.sort(key=lambda i: (index.cloud[i] is None, index.cloud[i] or 0.0,
                                       index.items[i]["id"]))  # fmt: skip
        return [pystac.Item.from_dict(index.items[i]) for i in chosen]
