"""agentgateway's simplified config format, read as it is and translated into mesh sections.

    llm:                                  →  models:
      models:                                  - name: gpt-3.5-turbo
      - name: gpt-3.5-turbo                      deployments:
        provider: openAI                         - {provider: openai, model: gpt-3.5-turbo,
        params: {model: ..., apiKey: ...}           api_key: ..., base_url: ...}
    mcp:                                  →  mcpServers:
      port: 3000                          →    (and gateway.port: 3000)
      targets:
      - name: everything                         everything: {command: npx, args: [...]}
        stdio: {cmd: npx, args: [...]}
      - name: remote                             remote: {url: http://...}
        mcp: {host: http://...}

`$VAR` and `${VAR}` are environment variables as in agentgateway (an unset one is empty). The
base URL of `openAI` and `anthropic` models is `$OPENAI_BASE_URL` / `$ANTHROPIC_BASE_URL` when
set, as with the providers' own SDKs. Everything else (`binds`, `config`, providers we have no
adapter for, ...) is listed by `translate` so the caller can name it in one warning.
"""

from __future__ import annotations

import os
import re
from typing import Any

from agentmesh.workers.config import ConfigError

TOP_LEVEL = ("llm", "mcp", "binds", "config", "frontendPolicies", "policies", "workloads")

# agentgateway provider → (our provider, base URL); an OpenAI-compatible API counts as openai.
PROVIDERS: dict[str, tuple[str, str]] = {
    "openAI": ("openai", "${OPENAI_BASE_URL:-https://api.openai.com/v1}"),
    "openai": ("openai", "${OPENAI_BASE_URL:-https://api.openai.com/v1}"),
    "anthropic": ("anthropic", "${ANTHROPIC_BASE_URL:-https://api.anthropic.com}"),
    "gemini": ("openai", "https://generativelanguage.googleapis.com/v1beta/openai"),
}
_BARE_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def is_agentgateway(raw: dict[str, Any]) -> bool:
    return any(key in raw for key in ("llm", "mcp", "binds"))


def translate(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(our sections, the agentgateway settings left out, by their path in the file)."""
    out = {k: v for k, v in raw.items() if k not in TOP_LEVEL}
    unsupported = [k for k in TOP_LEVEL if k in raw and k not in ("llm", "mcp")]
    if "llm" in raw:
        if "models" in out:
            raise_both("llm", "models")
        out["models"] = _models(raw["llm"], unsupported)
    if "mcp" in raw:
        if "mcpServers" in out:
            raise_both("mcp", "mcpServers")
        servers, port = _mcp(raw["mcp"], unsupported)
        out["mcpServers"] = servers
        if port is not None:
            gateway = dict(out.get("gateway") or {})
            gateway.setdefault("port", port)
            out["gateway"] = gateway
    return out, unsupported


def raise_both(theirs: str, ours: str) -> None:
    raise ConfigError(f"both '{theirs}' (agentgateway) and '{ours}' are set: keep one")


def _models(llm: Any, unsupported: list[str]) -> list[dict[str, Any]]:
    if not isinstance(llm, dict):
        return llm  # let the models section's validation name the problem
    unsupported.extend(f"llm.{k}" for k in llm if k != "models")
    by_name: dict[str, dict[str, Any]] = {}
    for i, model in enumerate(llm.get("models") or []):
        where = f"llm.models[{i}]"
        if not isinstance(model, dict):
            unsupported.append(where)
            continue
        unsupported.extend(f"{where}.{k}" for k in model if k not in ("name", "provider", "params"))
        provider = model.get("provider")
        if provider not in PROVIDERS:
            unsupported.append(f"{where}.provider={provider} (model {model.get('name')} skipped)")
            continue
        ours, base_url = PROVIDERS[provider]
        params = model.get("params") or {}
        unsupported.extend(f"{where}.params.{k}" for k in params if k not in ("model", "apiKey"))
        deployment: dict[str, Any] = {
            "provider": ours,
            "model": params.get("model") or model.get("name"),
            "base_url": base_url,
        }
        if params.get("apiKey") is not None:
            deployment["api_key"] = _vars(str(params["apiKey"]))
        name = model.get("name")
        # One name given twice is one alias with two deployments, tried in file order.
        entry = by_name.setdefault(str(name), {"name": name, "deployments": []})
        deployment["priority"] = len(entry["deployments"])
        entry["deployments"].append(deployment)
    return list(by_name.values())


def _mcp(mcp: Any, unsupported: list[str]) -> tuple[Any, int | None]:
    if not isinstance(mcp, dict):
        return mcp, None
    unsupported.extend(f"mcp.{k}" for k in mcp if k not in ("targets", "port"))
    servers: dict[str, Any] = {}
    for i, target in enumerate(mcp.get("targets") or []):
        where = f"mcp.targets[{i}]"
        if not isinstance(target, dict):
            unsupported.append(where)
            continue
        name = str(target.get("name"))
        kinds = [k for k in target if k != "name"]
        if "stdio" in target and isinstance(target["stdio"], dict):
            stdio = target["stdio"]
            unsupported.extend(
                f"{where}.stdio.{k}" for k in stdio if k not in ("cmd", "args", "env")
            )
            server = {"command": _vars(str(stdio.get("cmd", ""))), "args": stdio.get("args") or []}
            if stdio.get("env"):
                server["env"] = stdio["env"]
        elif kinds and kinds[0] in ("mcp", "sse") and isinstance(target[kinds[0]], dict):
            kind = kinds[0]
            spec = target[kind]
            unsupported.extend(f"{where}.{kind}.{k}" for k in spec if k != "host")
            server = {"url": _vars(str(spec.get("host", "")))}
            if kind == "sse":
                server["type"] = "sse"
        else:
            unsupported.append(f"{where} ({', '.join(kinds) or 'no transport'}; skipped)")
            continue
        unsupported.extend(f"{where}.{k}" for k in kinds[1:])
        servers[name] = server
    port = mcp.get("port")
    return servers, port if isinstance(port, int) else None


def _vars(value: str) -> str:
    """agentgateway's `$VAR` as our `${VAR:-}` (`${VAR}` is taken as is, empty when unset)."""
    value = value.replace("${", "\0")
    value = _BARE_VAR.sub(lambda m: "${" + m.group(1) + ":-}", value)
    value = re.sub(r"\0([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: "${" + m.group(1) + ":-}", value)
    return value.replace("\0", "${")


def unset_variables(raw: dict[str, Any]) -> list[str]:
    """The variables an agentgateway file names that this environment does not set."""
    found = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-\}", repr(raw)))
    return sorted(v for v in found if v not in os.environ)
