"""Command configs: a YAML file for the defaults of a run, flags on top of it.

`--config FILE.yaml` is expanded into flags placed before the ones typed, so the file and
the flags go through one parser and one validation, and a typed flag wins (argparse
keeps the last value). Unknown keys fail like unknown flags.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError


class ConfigFileError(ValueError):
    """A config file that cannot be read."""


class Command(BaseModel):
    """Base of every subcommand: documents `--config` (expanded before parsing)."""

    config: Path | None = Field(
        None, description="YAML file with this command's settings; flags override it."
    )


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; clear error otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigFileError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path} must hold a mapping of field: value")
    return data


def _flags(key: str, value: Any) -> list[str]:
    """A config field as the flags a user would type."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):  # booleans are switches: --force / --no-force
        return [flag if value else f"--no-{flag[2:]}"]
    if value is None:
        return [flag, "null"]
    if isinstance(value, list | dict):
        return [flag, json.dumps(value, default=str)]
    return [flag, str(value)]


def expand_config(argv: list[str]) -> list[str]:
    """Replace `--config FILE` in a subcommand's arguments by the file's fields as flags."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--config="):
            path, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        else:
            continue
        flags = [f for key, value in load_yaml(Path(path)).items() for f in _flags(str(key), value)]
        return rest[:1] + flags + rest[1:]  # after the subcommand, before typed flags
    return argv


# A value that starts like a negative number: -149,60,-146,62 or -0.5.
_NEGATIVE_VALUE = re.compile(r"-\.?\d")


def attach_negative_values(argv: list[str]) -> list[str]:
    """Write `--flag -149,60,-146,62` as `--flag=-149,60,-146,62`.

    argparse takes a value starting with "-" for a flag unless it is one plain negative
    number, so every western-hemisphere or southern box typed as the README shows would
    fail with "expected one argument".
    """
    out: list[str] = []
    for arg in argv:
        previous = out[-1] if out else ""
        if (_NEGATIVE_VALUE.match(arg) and previous.startswith("--") and "=" not in previous
                and len(previous) > 2):  # fmt: skip
            out[-1] = f"{previous}={arg}"
        else:
            out.append(arg)
    return out


def describe_validation_error(e: ValidationError) -> str:
    """One line per bad field, naming it as the user wrote it (`--tile-size`)."""
    lines = []
    for err in e.errors():
        if isinstance(err.get("input"), dict):  # a check across fields: the message says it
            lines.append(err["msg"].removeprefix("Value error, "))
            continue
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        field = "--" + loc[-1].replace("_", "-") if loc else "input"
        given = f" (got {err['input']!r})" if "input" in err and loc else ""
        lines.append(f"{field}: {err['msg']}{given}")
    return "\n".join(lines)
