"""Ingest: STAC search, co-registration and the zarr cube. Sources and bands are defined here."""
