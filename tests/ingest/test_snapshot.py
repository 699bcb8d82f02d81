"""A frozen catalog: plans made again from RUN/ingest/catalog.parquet, with no catalog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pytest

from ingest.catalog import CatalogError, open_catalog
from ingest.config import IngestConfig
from ingest.plan import make_plan, plan_to_json
from ingest.run import plan_or_load
from ingest.snapshot import SNAPSHOT_FILE, RecordingCatalog, SnapshotCatalog, write_snapshot
from ingest.sources import dem, sentinel2, worldcover

NOWHERE = "http://127.0.0.1:9/stac"  # nothing listens: a plan that searched would fail


def test_the_snapshot_answers_searches_as_the_api_does(
    make_config: Callable[..., IngestConfig], tmp_path: Path
) -> None:
    live = open_catalog(make_config(tmp_path).catalog)
    recording = RecordingCatalog(live)
    for collection in (sentinel2.COLLECTION, dem.COLLECTION, worldcover.COLLECTION):
        recording.search(collection)
    snapshot = SnapshotCatalog(write_snapshot(recording.items(), tmp_path / "all.parquet"))
    s2 = live.search(sentinel2.COLLECTION)
    w, s, e, n = s2[0].bbox
    queries = [
        {"bbox": (w, s, (w + e) / 2, (s + n) / 2)},
        {"datetime": "2021-03-01T00:00:00Z/2021-09-30T23:59:59.999999Z"},
        {"max_cloud_cover": 20, "sortby": "eo:cloud_cover"},
        {"datetime": "2022-01-01T00:00:00Z/..", "bbox": (w, s, e, n)},
    ]
    for query in queries:
        theirs = live.search(sentinel2.COLLECTION, **query)  # type: ignore[arg-type]
        ours = snapshot.search(sentinel2.COLLECTION, **query)  # type: ignore[arg-type]
        assert {i.id for i in ours} == {i.id for i in theirs}, query
        assert 0 < len(ours) <= len(s2)
        if "sortby" in query:
            clouds = [i.properties["eo:cloud_cover"] for i in ours]
            assert clouds == sorted(clouds)
    assert {i.id for i in snapshot.search(dem.COLLECTION, bbox=(w, s, e, n))} == {
        i.id for i in live.search(dem.COLLECTION, bbox=(w, s, e, n))
    }
    # the file is STAC GeoParquet: other tools read it
    table = gpd.read_parquet(tmp_path / "all.parquet")
    assert set(table["collection"]) == {sentinel2.COLLECTION, dem.COLLECTION,
                                        worldcover.COLLECTION}  # fmt: skip
    with pytest.raises(CatalogError, match="not in snapshot"):
        snapshot.search("sentinel-1-grd")


def test_a_run_replans_from_its_snapshot_without_the_catalog(
    make_config: Callable[..., IngestConfig], tmp_path: Path
) -> None:
    cfg = make_config(tmp_path / "live")
    plan = plan_or_load(cfg)
    snapshot = tmp_path / "live" / "ingest" / SNAPSHOT_FILE
    assert snapshot.is_file()
    used = {u.s2_item["id"] for u in plan.units} | {i for u in plan.units for i in u.dem_items}
    assert used <= {i["id"] for i in SnapshotCatalog(snapshot)._items}

    offline = make_config(tmp_path / "offline", catalog=NOWHERE, catalog_snapshot=snapshot)
    again = plan_or_load(offline)
    assert plan_to_json(again, cfg) == plan_to_json(plan, cfg)  # the same plan, byte for byte
    twice = make_plan(offline, SnapshotCatalog(tmp_path / "offline" / "ingest" / SNAPSHOT_FILE))
    assert plan_to_json(twice, cfg) == plan_to_json(plan, cfg)
    with pytest.raises(ValueError, match="catalog_snapshot .* does not exist"):
        make_config(tmp_path / "x", catalog_snapshot=tmp_path / "missing.parquet")
