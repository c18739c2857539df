"""What the workers' config files share: `${VAR}` expansion and one error type.

`${VAR}` is replaced by the environment variable, `${VAR:-default}` falls back to `default`; an
unset variable without a default is an error that names where it was used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config file is unreadable or invalid; the message names the file and the field."""


def expand_env(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of `value` (lists and maps too).

    Raises:
        KeyError: an unset VAR without a default; the message says where.
    """
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise KeyError(f"{where or 'value'}: environment variable {name} is not set")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: expand_env(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    return value


def reasons(exc: ValidationError) -> str:
    """A pydantic error on one line: `field.path: what is wrong; ...`."""
    out = []
    for error in exc.errors():
        where = ".".join(str(x) for x in error["loc"])
        what = error["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {what}" if where else what)
    return "; ".join(out)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line: what is wrong and where (its own spans several)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def read_config(path: Path) -> str:
    """The text of a config file; `ConfigError` naming the file if it cannot be read."""
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def validate_config(
    model: type[M], raw: Any, *, source: str, environ: Mapping[str, str] | None
) -> M:
    """`raw` with `${VAR}` expanded, validated as `model`; one-line `ConfigError`s."""
    env = os.environ if environ is None else environ
    try:
        return model.model_validate(expand_env(raw, env))
    except ValidationError as exc:
        raise ConfigError(f"{source}: {reasons(exc)}") from None
    except KeyError as exc:
        raise ConfigError(f"{source}: {exc.args[0]}") from None
