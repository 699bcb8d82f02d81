"""Real local services that serve a sample world like Planetary Computer serves the real one.

``LocalServices`` starts, as child processes bound to 127.0.0.1:

- PostgreSQL + PostGIS with the pgstac schema (``postgres``), holding the world's STAC
  collections and items (``catalog_loader``);
- stac-fastapi-pgstac, the STAC API (``stac_api``);
- a Range-capable HTTP server for the world's COGs (``cog_server``).

    with LocalServices(world_dir, state_dir) as svc:
        svc.stac_url, svc.cog_url
"""

from infra.services.catalog_loader import WorldError
from infra.services.local import LocalServices
from infra.services.process import ServiceError

__all__ = ["LocalServices", "ServiceError", "WorldError"]
