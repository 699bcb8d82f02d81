"""Load a sample world's static STAC catalog into pgstac, with hrefs served over HTTP.

The world holds a self-contained static catalog whose asset hrefs are relative paths into
``WORLD/data``. The API must hand out URLs instead, exactly like Planetary Computer, so
every asset href becomes ``{cog_url}/{path relative to WORLD}``. What was loaded (the
world's fingerprint and the COG server URL) is recorded in the database, so a restart
with the same world and URL skips the load, and a different world replaces the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import pystac
from pypgstac.load import Loader, Methods

from infra.services.postgres import pgstac_db
from infra.services.process import ServiceError

logger = logging.getLogger(__name__)

QUERYABLES_PATH = Path(__file__).resolve().parent.parent / "queryables.json"
# Indexed because ingest filters every search by cloud cover.
INDEXED_QUERYABLES = ["eo:cloud_cover"]
# Links the API generates itself; the static catalog's relative versions would be wrong.
STRUCTURAL_RELS = {"self", "root", "parent", "child", "item", "items", "collection"}

_STATE_DDL = """
CREATE SCHEMA IF NOT EXISTS eomae;
CREATE TABLE IF NOT EXISTS eomae.loaded_world (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint text NOT NULL,
    cog_url text NOT NULL,
    world_dir text NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
"""


class WorldError(ServiceError):
    """The directory is not a usable sample world."""


@dataclass(frozen=True)
class World:
    """A validated world directory."""

    root: Path
    meta: dict[str, Any]
    fingerprint: str

    @property
    def catalog_path(self) -> Path:
        """The static catalog's root file."""
        return self.root / "stac" / "catalog.json"


@dataclass(frozen=True)
class LoadResult:
    """What ``load_world`` did."""

    collections: int
    items: int
    skipped: bool
    replaced_previous: bool


def open_world(world_dir: Path) -> World:
    """Check that ``world_dir`` is a sample world and fingerprint its catalog.

    The fingerprint combines the generator's own one (``world.json``) with a hash of
    every STAC file, so hand-edited or regenerated catalogs are noticed too.
    """
    # abspath, like pystac: both sides of served_href must spell paths the same way.
    root = Path(os.path.abspath(Path(world_dir).expanduser()))
    hint = "generate one with `eomae world` or pass the directory it wrote"
    if not root.is_dir():
        raise WorldError(f"{root} is not a sample world: no such directory ({hint})")
    missing = [n for n in ("world.json", "stac/catalog.json") if not (root / n).is_file()]
    if missing:
        raise WorldError(f"{root} is not a sample world: missing {' and '.join(missing)} ({hint})")
    try:
        meta = json.loads((root / "world.json").read_text())
    except (OSError, ValueError) as e:
        raise WorldError(f"{root / 'world.json'} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or "eomae_world" not in meta:
        raise WorldError(
            f"{root / 'world.json'} is not an eomae world marker (no 'eomae_world' key)"
        )
    digest = hashlib.sha256(str(meta.get("fingerprint", "")).encode())
    for path in sorted((root / "stac").rglob("*.json")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return World(root=root, meta=meta, fingerprint=digest.hexdigest())


def served_href(href: str, base: Path, world: World, cog_url: str) -> str:
    """URL under which the COG server serves ``href`` (relative to the file at ``base``)."""
    if urlparse(href).scheme in ("http", "https"):
        return href
    # Lexical, not resolve(): a world may symlink its data, and the server follows links.
    path = Path(os.path.normpath(base.parent / href))
    try:
        relative = path.relative_to(world.root)
    except ValueError as e:
        raise WorldError(f"{base}: asset href {href} points outside the world {world.root}") from e
    if not path.exists():
        logger.warning("%s: asset file %s does not exist", base, path)
    return f"{cog_url.rstrip('/')}/{quote(relative.as_posix())}"


def _api_dict(path: Path, world: World, cog_url: str) -> dict[str, Any]:
    """The STAC file at ``path`` as the API should serve it.

    The JSON is taken as written rather than through pystac's objects: pystac would
    migrate it to its latest STAC version (``proj:epsg`` becomes ``proj:code``), and the
    API must serve items shaped like Planetary Computer's.
    """
    data: dict[str, Any] = json.loads(path.read_text())
    for asset in data.get("assets", {}).values():
        asset["href"] = served_href(asset["href"], path, world, cog_url)
    data["links"] = [link for link in data.get("links", []) if link["rel"] not in STRUCTURAL_RELS]
    return data


def world_records(world: World, cog_url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Collections and items of the world as dicts ready for pgstac."""
    # pystac only walks the catalog tree here; see _api_dict for why not its objects.
    catalog = pystac.Catalog.from_file(str(world.catalog_path))
    collections: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for collection in catalog.get_all_collections():
        collections.append(_api_dict(_self_path(collection), world, cog_url))
        for item in collection.get_items(recursive=True):
            items.append(_api_dict(_self_path(item), world, cog_url))
    if not collections:
        raise WorldError(f"{world.catalog_path} contains no collections")
    return collections, items


def _self_path(obj: pystac.STACObject) -> Path:
    href = obj.get_self_href()
    if href is None or urlparse(href).scheme not in ("", "file"):
        raise WorldError(f"{obj.id} in the world's catalog is not a local file ({href})")
    return Path(href.removeprefix("file://"))


def load_world(dsn: str, world: World, cog_url: str) -> LoadResult:
    """Make pgstac hold exactly ``world``'s collections and items, hrefs under ``cog_url``.

    Skips the work when the database already holds this world for this URL; removes
    the collections (and with them the items) of any other world first.
    """
    with pgstac_db(dsn) as db:
        conn = db.connect()
        conn.execute(_STATE_DDL)
        row = conn.execute("SELECT fingerprint, cog_url FROM eomae.loaded_world").fetchone()
        if row == (world.fingerprint, cog_url):
            logger.info("pgstac already holds %s served from %s", world.root, cog_url)
            return LoadResult(collections=0, items=0, skipped=True, replaced_previous=False)

        collections, items = world_records(world, cog_url)
        # Same world, new COG URL: upserting every item rewrites all hrefs. Any other
        # world (or an unknown state) is removed first so no stale item survives.
        replace = row is None or row[0] != world.fingerprint
        deleted = 0
        with conn.transaction():
            if replace:
                # Deleting a collection drops its item partition.
                deleted = conn.execute("DELETE FROM pgstac.collections").rowcount
                if deleted:
                    logger.info("removed %d collections of a previous world", deleted)
            # The function `pypgstac load_queryables` calls; typed queryables make
            # eo:cloud_cover filter and sort as a number, not as text.
            conn.execute(
                "SELECT pgstac.upsert_queryables(%s::jsonb, %s::text[], %s::text[], %s)",
                [QUERYABLES_PATH.read_text(), None, INDEXED_QUERYABLES, False],
            )
        loader = Loader(db)
        loader.load_collections(iter(collections), Methods.upsert)
        loader.load_items(iter(items), Methods.upsert)
        conn.execute(
            """
            INSERT INTO eomae.loaded_world (fingerprint, cog_url, world_dir) VALUES (%s, %s, %s)
            ON CONFLICT (singleton) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
                cog_url = EXCLUDED.cog_url, world_dir = EXCLUDED.world_dir, loaded_at = now()
            """,
            [world.fingerprint, cog_url, str(world.root)],
        )
    logger.info(
        "loaded %d collections and %d items from %s", len(collections), len(items), world.root
    )
    return LoadResult(
        collections=len(collections),
        items=len(items),
        skipped=False,
        replaced_previous=deleted > 0,
    )
