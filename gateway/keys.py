"""API keys of the gateway: created once, stored hashed in JetStream KV, shared by every replica.

A key reads `amk_<key_id>_<secret>`. The KV bucket `agentmesh_keys` holds, per key, the JSON
record `<p>.<key_id>` (key_id, name, scopes, rate_limit, token_limit, tools, agents, to_agents,
created_at, hash: the key's SHA-256); never the key itself. `tools` is a list of `server/tool`
patterns, or null for every tool; `to_agents` a list of agent id patterns, or null for every
agent. Keys made before JetStream held them are moved there by `gateway.migration`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from agentmesh.broker.durable import KEYS_BUCKET, DurableState
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
    # Agent ids the key may call (send to, tasks for, A2A), as `*`/`?` patterns. None: every
    # agent; (): none.
    to_agents: tuple[str, ...] | None = None


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


def parse_agent_patterns(
    values: list[str] | tuple[str, ...] | str | None, *, field: str = "agents"
) -> tuple[str, ...]:
    """Agent id patterns from `["bot-*", "support"]` or `"bot-*,support"`, deduplicated in
    order; `None` or empty gives `()` (attach and speak as no agent). A pattern holds what an
    agent id may hold (letters, digits, `_`, `-`) plus the wildcards `*` and `?`.

    Raises:
        InvalidMessage: a malformed pattern (`field` names the field in its details).
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
                details={"field": field},
            )
        if text:
            out[text] = None
    return tuple(out)


def parse_to_agent_patterns(
    values: list[str] | tuple[str, ...] | str | None,
) -> tuple[str, ...] | None:
    """The agents a key may call, as `parse_agent_patterns` reads them, but `None` stays `None`
    (every agent) and an empty list gives `()` (no agent at all).

    Raises:
        InvalidMessage: a malformed pattern, or a string with no pattern in it.
    """
    if values is None:
        return None
    patterns = parse_agent_patterns(values, field="to_agents")
    if not patterns and isinstance(values, str):
        raise InvalidMessage(
            "no agent pattern given: use agent ids with * or ? wildcards, e.g. 'a*'",
            details={"field": "to_agents"},
        )
    return patterns


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
    """Create, list, revoke and look up API keys in the mesh's JetStream KV bucket.

    JetStream failures raise `Unavailable` (the gateway answers 503, never a false 401).
    """

    def __init__(self, durable: DurableState, subjects: Subjects) -> None:
        self._bucket = durable.bucket(KEYS_BUCKET)
        self._subjects = subjects

    def _record_key(self, key_id: str) -> str:
        return self._subjects.record(key_id, what="key id")

    async def create(
        self,
        name: str,
        *,
        scopes: frozenset[Scope],
        rate_limit: Limit | None = None,
        token_limit: Limit | None = None,
        tools: tuple[str, ...] | list[str] | None = None,
        agents: tuple[str, ...] | list[str] | None = None,
        to_agents: tuple[str, ...] | list[str] | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key. The plaintext is returned here once and stored nowhere.

        `tools`: `server/tool` patterns of the MCP tools the key may use; `None`: every tool.
        `agents`: agent id patterns the key may attach as and send as; `None`: none.
        `to_agents`: agent id patterns of the agents the key may call; `None`: every agent.

        Raises:
            InvalidMessage: a bad name, no scopes, a limit below one request (or token) per
                period, or a malformed tool or agent pattern.
            Unavailable: JetStream cannot be reached.
        """
        validate_name(name)
        scopes = parse_scopes([str(s) for s in scopes])
        tools = parse_tool_patterns(None if tools is None else list(tools))
        agents = parse_agent_patterns(None if agents is None else list(agents))
        to_agents = parse_to_agent_patterns(None if to_agents is None else list(to_agents))
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
            to_agents=to_agents,
        )
        if not await self.adopt(record, hash_key(key)):
            raise InvalidMessage("key id collision; create the key again")  # 2**-62: never
        return key, record

    async def adopt(self, record: KeyRecord, key_hash: str) -> bool:
        """Store an existing key (`agentmesh.gateway.migration`); False if its id is taken."""
        return await self._bucket.create(
            self._record_key(record.key_id), _document(record, key_hash)
        )

    async def list(self) -> list[KeyRecord]:
        """Every key of the mesh, oldest first."""
        found = await self._bucket.scan(self._subjects.prefix)
        records = [_record(key_id, doc) for key_id, doc in found.items()]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> bool:
        """Delete a key; `False` if there is none with that id. Takes effect on the next call,
        on every replica."""
        if not isinstance(key_id, str) or not _ID_RE.fullmatch(key_id):
            return False
        return await self._bucket.delete(self._record_key(key_id))

    async def lookup(self, key: str) -> KeyRecord | None:
        """The record of a presented key, or `None` if it is malformed, unknown or revoked.

        Raises:
            Unavailable: JetStream cannot be reached (not knowing is not "unknown").
        """
        key_id = key_id_of(key)
        if key_id is None:
            return None
        # No in-process cache: one KV get per request, so revocation is immediate everywhere.
        doc = await self._bucket.get(self._record_key(key_id))
        stored = doc.get("hash") if doc is not None else None
        if not isinstance(stored, str) or not hmac.compare_digest(stored, hash_key(key)):
            return None
        return _record(key_id, doc)


def _document(record: KeyRecord, key_hash: str) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "name": record.name,
        "scopes": sorted(s.value for s in record.scopes),
        "rate_limit": None if record.rate_limit is None else str(record.rate_limit),
        "token_limit": None if record.token_limit is None else str(record.token_limit),
        "tools": None if record.tools is None else list(record.tools),
        "agents": list(record.agents),
        "to_agents": None if record.to_agents is None else list(record.to_agents),
        "created_at": record.created_at,
        "hash": key_hash,
    }


def _record(key_id: str, doc: dict[str, Any] | None) -> KeyRecord | None:
    """The record of a stored document; a damaged field grants less, never more."""
    if doc is None:
        return None
    scopes = doc.get("scopes")
    names = scopes if isinstance(scopes, list) else []
    created = doc.get("created_at")
    return KeyRecord(
        key_id=key_id,
        name=doc["name"] if isinstance(doc.get("name"), str) else "",
        scopes=frozenset(Scope(s) for s in names if s in _SCOPES),
        rate_limit=_stored_limit(doc.get("rate_limit")),
        created_at=float(created) if isinstance(created, int | float) else 0.0,
        token_limit=_stored_limit(doc.get("token_limit")),
        tools=_stored_patterns(doc.get("tools", None)),
        agents=_stored_agents(doc.get("agents")),
        to_agents=_stored_patterns(doc.get("to_agents", None)),
    )


def _stored_limit(value: object) -> Limit | None:
    if not isinstance(value, str) or not value:
        return None
    return Limit.parse(value)


def _stored_patterns(value: object) -> tuple[str, ...] | None:
    """`tools` or `to_agents` as stored: None is every one."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ()  # a damaged record grants none rather than every one
    return tuple(value)


def _stored_agents(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ()
    return tuple(value)


_SCOPES = frozenset(s.value for s in Scope)
