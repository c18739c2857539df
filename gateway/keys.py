"""API keys of the gateway: created once, stored hashed in Redis, shared by every replica.

A key reads `amk_<key_id>_<secret>`. Redis holds, per key, the HASH `<p>:key:<key_id>` (name,
scopes, rate_limit, token_limit, tools, created_at, hash) and the set `<p>:keys` of ids; never the
key itself. `tools` is a JSON list of `server/tool` patterns, or "" (or absent, in keys created
before it existed) for every tool.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.schemas.errors import InvalidMessage

KEY_PREFIX = "amk_"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # no "_": it separates id and secret
_ID_LEN = 12  # 36**12 ~ 2**62 ids: a collision between two creates is not a practical concern
_SECRET_BYTES = 32
_ID_RE = re.compile(rf"[a-z0-9]{{8,{_ID_LEN}}}")
_MAX_KEY_LEN = 256  # far above a real key; longer input is refused before any work
MAX_NAME_LEN = 64
DEFAULT_SCOPES = frozenset({Scope.AGENTS_READ, Scope.SEND, Scope.CONNECT})
MAX_TOOL_PATTERN_LEN = 256
_TOOL_SERVER_RE = re.compile(r"[A-Za-z0-9_*-]+")
_AGENT_PATTERN_RE = re.compile(r"[A-Za-z0-9_*?-]{1,128}")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the mesh knows about a key. Holds neither the key nor its hash."""

    key_id: str
    name: str
    scopes: frozenset[Scope]
    rate_limit: Limit | None  # requests per period
    created_at: float  # Unix seconds
    token_limit: Limit | None = None  # LLM tokens per period, reserved then corrected
    # MCP tools the key may list and call, as `server/tool` patterns with `*`/`?` wildcards.
    # None: every tool; (): none.
    tools: tuple[str, ...] | None = None
    # Agent ids the key may attach as (WebSocket) and send as (`from_agent_id`), as patterns
    # with `*`/`?` wildcards (`"bot-*"`, `"*"`). (): none, the default; admin keys: every id.
    agents: tuple[str, ...] = ()


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so nobody can guess them from a hash: a slow password hash
    # (bcrypt, argon2) would add nothing but latency to every request. One SHA-256 suffices.
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(values: list[str] | tuple[str, ...] | str) -> frozenset[Scope]:
    """Scopes from `["send", "agents:read"]` or `"send,agents:read"`.

    Raises:
        InvalidMessage: an unknown scope, or none at all.
    """
    items = values.split(",") if isinstance(values, str) else values
    out: set[Scope] = set()
    for item in items:
        text = item.strip()
        try:
            out.add(Scope(text))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise InvalidMessage(
                f"unknown scope {text!r}: use one of {known}", details={"field": "scopes"}
            ) from None
    if not out:
        raise InvalidMessage("a key needs at least one scope", details={"field": "scopes"})
    return frozenset(out)


def parse_tool_patterns(
    values: list[str] | tuple[str, ...] | str | None,
) -> tuple[str, ...] | None:
    """Tool patterns from `["time/*", "demo/echo"]` or `"time/*,demo/echo"`, deduplicated in
    order. `None` stays `None` (every tool); an empty list gives `()` (no tool at all).

    A pattern is `server/tool`: the server part of ASCII letters, digits, `_`, `-` and `*`; the
    tool part of printable characters other than whitespace and `/` (`*` and `?` match as in
    fnmatch).

    Raises:
        InvalidMessage: a malformed pattern, or a string with no pattern in it.
    """
    if values is None:
        return None
    items: list[object] = list(values.split(",") if isinstance(values, str) else values)
    out: dict[str, None] = {}  # ordered set
    for item in items:
        if not isinstance(item, str):
            raise InvalidMessage(f"invalid tool pattern {item!r}", details={"field": "tools"})
        text = item.strip()
        if text:
            _check_tool_pattern(text)
            out[text] = None
    if not out and isinstance(values, str):
        # An empty list says "no tool" plainly; an empty string is more likely a mistake.
        raise InvalidMessage(
            "no tool pattern given: use server/tool patterns such as 'time/*'",
            details={"field": "tools"},
        )
    return tuple(out)


def _check_tool_pattern(text: str) -> None:
    server, sep, tool = text.partition("/")
    problem = None
    if len(text) > MAX_TOOL_PATTERN_LEN:
        problem = f"longer than {MAX_TOOL_PATTERN_LEN} characters"
    elif not sep or not server or not tool or "/" in tool:
        problem = "use server/tool, e.g. 'time/*' or 'github/get_issue'"
    elif not _TOOL_SERVER_RE.fullmatch(server):
        problem = "the server part may hold only letters, digits, '_', '-' and '*'"
    elif not all(ch.isprintable() and not ch.isspace() for ch in tool):
        problem = "the tool part may hold no whitespace or unprintable characters"
    if problem:
        shown = text if len(text) <= 80 else text[:80] + "..."
        raise InvalidMessage(
            f"invalid tool pattern {shown!r}: {problem}", details={"field": "tools"}
        )


def parse_agent_patterns(values: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """Agent id patterns from `["bot-*", "support"]` or `"bot-*,support"`, deduplicated in
    order; `None` or empty gives `()` (attach and speak as no agent). A pattern holds what an
    agent id may hold (letters, digits, `_`, `-`) plus the wildcards `*` and `?`.

    Raises:
        InvalidMessage: a malformed pattern.
    """
    if values is None:
        return ()
    items: list[object] = list(values.split(",") if isinstance(values, str) else values)
    out: dict[str, None] = {}
    for item in items:
        text = item.strip() if isinstance(item, str) else None
        if text is None or (text and not _AGENT_PATTERN_RE.fullmatch(text)):
            shown = repr(item)[:80]
            raise InvalidMessage(
                f"invalid agent pattern {shown}: use agent ids with * or ? wildcards, e.g. 'bot-*'",
                details={"field": "agents"},
            )
        if text:
            out[text] = None
    return tuple(out)


def validate_name(name: object) -> str:
    if isinstance(name, str) and 1 <= len(name) <= MAX_NAME_LEN and name.isprintable():
        if name.strip():
            return name
    raise InvalidMessage(
        f"invalid key name {name!r}: use 1-{MAX_NAME_LEN} printable characters",
        details={"field": "name"},
    )


def key_id_of(key: str) -> str | None:
    """The id part of `amk_<key_id>_<secret>`, or `None` if `key` does not have that shape."""
    if len(key) > _MAX_KEY_LEN or not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not secret or not _ID_RE.fullmatch(key_id):
        return None
    return key_id


class KeyStore:
    """Create, list, revoke and look up API keys in the mesh's Redis."""

    def __init__(self, redis: aioredis.Redis, subjects: Subjects) -> None:
        self._redis = redis
        self._subjects = subjects

    def _record_key(self, key_id: str) -> str:
        return self._subjects.key("key", key_id)

    async def create(
        self,
        name: str,
        *,
        scopes: frozenset[Scope],
        rate_limit: Limit | None = None,
        token_limit: Limit | None = None,
        tools: tuple[str, ...] | list[str] | None = None,
        agents: tuple[str, ...] | list[str] | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key. The plaintext is returned here once and stored nowhere.

        `tools`: `server/tool` patterns of the MCP tools the key may use; `None`: every tool.
        `agents`: agent id patterns the key may attach as and send as; `None`: none.

        Raises:
            InvalidMessage: a bad name, no scopes, a limit below one request (or token) per
                period, or a malformed tool pattern.
        """
        validate_name(name)
        scopes = parse_scopes([str(s) for s in scopes])
        tools = parse_tool_patterns(None if tools is None else list(tools))
        agents = parse_agent_patterns(None if agents is None else list(agents))
        for field, limit, unit in (
            ("rate_limit", rate_limit, "request"),
            ("token_limit", token_limit, "token"),
        ):
            if limit is not None and limit.count < 1:
                # A bucket smaller than one unit would refuse every call forever.
                what = field.replace("_", " ")
                raise InvalidMessage(
                    f"{what} {limit} allows no {unit}: the count must be at least 1",
                    details={"field": field},
                )
        key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LEN))
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
        record = KeyRecord(
            key_id=key_id,
            name=name,
            scopes=scopes,
            rate_limit=rate_limit,
            created_at=time.time(),
            token_limit=token_limit,
            tools=tools,
            agents=agents,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._record_key(key_id),
                mapping={
                    "name": name,
                    "scopes": ",".join(sorted(s.value for s in scopes)),
                    "rate_limit": "" if rate_limit is None else str(rate_limit),
                    "token_limit": "" if token_limit is None else str(token_limit),
                    "tools": "" if tools is None else json.dumps(list(tools)),
                    "agents": json.dumps(list(agents)),
                    "created_at": repr(record.created_at),
                    "hash": hash_key(key),
                },
            )
            pipe.sadd(self._subjects.key("keys"), key_id)
            await pipe.execute()
        return key, record

    async def list(self) -> list[KeyRecord]:
        """Every key of the mesh, oldest first."""
        ids = sorted(i.decode() for i in await self._redis.smembers(self._subjects.key("keys")))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._record_key(key_id))
            raws = await pipe.execute()
        records = [_record(i, raw) for i, raw in zip(ids, raws, strict=True)]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> bool:
        """Delete a key; `False` if there is none with that id. Takes effect on the next call."""
        if not isinstance(key_id, str) or not _ID_RE.fullmatch(key_id):
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._record_key(key_id))
            pipe.srem(self._subjects.key("keys"), key_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def lookup(self, key: str) -> KeyRecord | None:
        """The record of a presented key, or `None` if it is malformed, unknown or revoked."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        # No in-process cache: one HGETALL per request is cheap, and revocation is immediate.
        raw = await self._redis.hgetall(self._record_key(key_id))
        stored = raw.get(b"hash", b"").decode()
        if not stored or not hmac.compare_digest(stored, hash_key(key)):
            return None
        return _record(key_id, raw)


def _record(key_id: str, raw: dict[bytes, bytes]) -> KeyRecord | None:
    if not raw:  # revoked between SMEMBERS and HGETALL
        return None
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    scopes = frozenset(Scope(s) for s in fields.get("scopes", "").split(",") if s in _SCOPES)
    limit, tokens = fields.get("rate_limit", ""), fields.get("token_limit", "")
    return KeyRecord(
        key_id=key_id,
        name=fields.get("name", ""),
        scopes=scopes,
        rate_limit=Limit.parse(limit) if limit else None,
        created_at=float(fields.get("created_at", 0) or 0),
        token_limit=Limit.parse(tokens) if tokens else None,
        tools=_stored_tools(fields.get("tools", "")),
        agents=_stored_agents(fields.get("agents", "")),
    )


def _stored_tools(text: str) -> tuple[str, ...] | None:
    if not text:  # also keys created before tool permissions existed: every tool
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ()  # a damaged record grants no tool rather than every tool
    return tuple(value)


def _stored_agents(text: str) -> tuple[str, ...]:
    # Keys created before agent patterns existed attach as no agent: a connect key must now
    # name its agents (`agentmesh keys create NAME --scopes connect --agents 'bot-*'`).
    try:
        value = json.loads(text) if text else []
    except ValueError:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ()
    return tuple(value)


_SCOPES = frozenset(s.value for s in Scope)
