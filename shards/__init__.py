"""Shards: chips from the cube into WebDataset shards, manifest, stats, loader (issue 6)."""
