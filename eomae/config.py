"""Command configs: a YAML file for the defaults of a run, flags on top of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    """A config file that cannot be read."""


class Command(BaseModel):
    """Base of every subcommand: `--config FILE` supplies fields that flags did not set."""

    config: Path | None = Field(
        None, description="YAML file with this command's settings; flags override it."
    )

    def resolved(self: M) -> M:
        """Return this command with the YAML file's values under the flags that were given."""
        path = getattr(self, "config", None)
        if path is None:
            return self
        data = load_yaml(path)
        data = {k.replace("-", "_"): v for k, v in data.items()}
        flags = {k: getattr(self, k) for k in self.model_fields_set}
        return type(self).model_validate({**data, **flags})


def describe_validation_error(e: ValidationError) -> str:
    """One line per bad field, naming it as the user wrote it (`--tile-size`)."""
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        field = "--" + loc[-1].replace("_", "-") if loc else "input"
        given = f" (got {err['input']!r})" if "input" in err and loc else ""
        lines.append(f"{field}: {err['msg']}{given}")
    return "\n".join(lines)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; clear error otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigFileError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} must hold a mapping")
    return data
