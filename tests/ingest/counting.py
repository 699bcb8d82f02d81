"""A catalog wrapper for tests: what each search asked for (tests/ingest is on sys.path)."""

from __future__ import annotations

from typing import Any

from ingest.snapshot import RecordingCatalog


class Counting(RecordingCatalog):
    """A catalog that also keeps the collection and box of every search."""

    def __init__(self, catalog: Any) -> None:
        super().__init__(catalog)
        self.boxes: list[tuple[str, tuple[float, ...]]] = []

    def search(self, collection: str, **filters: Any) -> list[Any]:  # type: ignore[override]
        self.boxes.append((collection, tuple(filters["bbox"])))
        return super().search(collection, **filters)
