"""Copernicus DEM GLO-30 as Planetary Computer publishes it."""

COLLECTION = "cop-dem-glo-30"
ASSET = "data"
RESOLUTION_DEG = 1 / 3600  # 1 arc-second, ~30 m
DTYPE = "float32"
