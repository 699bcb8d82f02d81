"""Where eomae runs: the sample world, local services (STAC API, COG server), cluster configs."""
