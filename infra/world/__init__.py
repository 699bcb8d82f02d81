"""The sample world: a small synthetic region served like Planetary Computer's catalog."""

from infra.world.config import WorldConfig
from infra.world.generate import WorldError, generate_world, read_marker

__all__ = ["WorldConfig", "WorldError", "generate_world", "read_marker"]
