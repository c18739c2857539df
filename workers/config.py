"""What the workers' config files share: `${VAR}` expansion and one error type.

`${VAR}` is replaced by the environment variable, `${VAR:-default}` falls back to `default`; an
unset variable without a default is an error that names where it was used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

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
