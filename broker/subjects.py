"""The one place that builds NATS subjects and Redis keys.

Every outside identifier that becomes a subject token goes through `validate_id` (refused if
unsafe) or `escape_token` (made safe, reversibly). No other module formats a subject, so no id
can ever widen a subscription with `*` or `>` or add tokens with `.`.
"""

from __future__ import annotations

import re

from agentmesh.schemas.errors import InvalidId

# Used with fullmatch: `$` would also accept a trailing "\n" (a NATS protocol line break).
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,127}")
ID_RE = _ID_RE  # for checks that report their own error (use with fullmatch)
ID_PATTERN = f"^{_ID_RE.pattern}$"  # the same rule as a JSON Schema `pattern` (OpenAPI)
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
MAX_NAME_LEN = 256


def validate_id(value: object, *, what: str = "agent id") -> str:
    """Return `value` if it is a safe single token, else raise `InvalidId`.

    Allowed: 1-128 characters of ASCII letters, digits, `_` and `-`, starting with a letter or
    digit. Anything else (`.`, `*`, `>`, white space, control characters, ...) is refused.
    """
    if isinstance(value, str) and _ID_RE.fullmatch(value):
        return value
    raise InvalidId(
        f"invalid {what} {value!r}: use 1-128 letters, digits, '_' or '-', "
        "starting with a letter or digit",
        details={"field": what},
    )


validate_token = validate_id


def escape_token(name: str, *, what: str = "name") -> str:
    """Make an arbitrary name (a model alias like `gpt-4.1`, a tool name) one safe token.

    Letters, digits, `_` and `-` stay; every other character becomes `~XX` per UTF-8 byte, so
    `gpt-4.1` becomes `gpt-4~2e1`. The mapping is reversible (`unescape_token`) and injective.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN:
        raise InvalidId(
            f"invalid {what} {name!r}: 1-{MAX_NAME_LEN} characters", details={"field": what}
        )
    if all(c in _SAFE for c in name):
        return name
    out = []
    for c in name:
        if c in _SAFE:
            out.append(c)
        else:
            try:
                out.extend(f"~{b:02x}" for b in c.encode())
            except UnicodeEncodeError:  # a lone surrogate, e.g. from JSON "\ud800"
                raise InvalidId(
                    f"invalid {what} {name!r}: not valid Unicode", details={"field": what}
                ) from None
    return "".join(out)


def unescape_token(token: str) -> str:
    """The name `escape_token` made `token` from; `InvalidId` if no name escapes to it."""
    raw = bytearray()
    i = 0
    try:
        while i < len(token):
            if token[i] == "~":
                raw.append(int(token[i + 1 : i + 3], 16))
                i += 3
            else:
                raw.extend(token[i].encode())
                i += 1
        name = raw.decode()
        # Only the canonical form is accepted ("~41" is not "A"), so the inverse is exact too.
        if escape_token(name) == token:
            return name
    except (ValueError, InvalidId):  # bad hex, truncated escape, invalid UTF-8, bad length
        pass
    raise InvalidId(f"invalid escaped token {token!r}", details={"field": "token"})


class Subjects:
    """Subjects and Redis keys of one mesh (one prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_id(prefix, what="prefix")

    # NATS subjects -------------------------------------------------------------------------
    def agent(self, agent_id: str) -> str:
        """Requests to an agent; served in the queue group `agent_queue(agent_id)`."""
        return f"{self.prefix}.agent.{validate_id(agent_id)}"

    def agent_queue(self, agent_id: str) -> str:
        return f"{self.prefix}.agent.{validate_id(agent_id)}"

    def control(self, instance_id: str) -> str:
        """Control messages (cancel) for one running instance."""
        return f"{self.prefix}.ctl.{validate_id(instance_id, what='instance id')}"

    def control_all(self) -> str:
        """Cancels whose target instance is not yet known; every instance listens."""
        return f"{self.prefix}.ctl._all"

    def llm(self, alias: str) -> str:
        """Calls to a model alias, served by LLM workers in the queue group of the same name.

        Aliases are escaped, not refused: `gpt-4.1` is `<p>.llm.gpt-4~2e1`.
        """
        return f"{self.prefix}.llm.{escape_token(alias, what='model')}"

    def tool(self, server: str) -> str:
        """Tool calls to one MCP server, served by MCP workers in the queue group of the same name.

        Server names are ids (validated, never escaped): `<p>.tool.time`.
        """
        return f"{self.prefix}.tool.{validate_id(server, what='MCP server name')}"

    def presence_events(self, agent_id: str | None = None) -> str:
        """Presence changes: `<p>.presence.<agent_id>`; `None` gives the wildcard for watching."""
        return f"{self.prefix}.presence.{'*' if agent_id is None else validate_id(agent_id)}"

    def service_events(self, kind: str | None = None, instance_id: str | None = None) -> str:
        """Registry changes of any kind: `<p>.svc.<kind>.<instance_id>`; `None` is a wildcard.

        `<p>.svc.>` watches every kind, `service_events("llm-worker")` one kind's instances.
        """
        k = "*" if kind is None else validate_id(kind, what="service kind")
        i = "*" if instance_id is None else validate_id(instance_id, what="instance id")
        return f"{self.prefix}.svc.{k}.{i}"

    # Durable tasks (broker/tasks.py) ---------------------------------------------------------
    def task_queue(self, priority: str | None = None) -> str:
        """A task's place in the work queue, `<p>.tasks.queue.<priority>` (`None`: all)."""
        return f"{self.prefix}.tasks.queue.{'*' if priority is None else validate_id(priority)}"

    def task_events(self, task_id: str | None = None) -> str:
        """A task's event log, `<p>.tasks.events.<task_id>` (`None`: every task's)."""
        t = "*" if task_id is None else validate_id(task_id, what="task id")
        return f"{self.prefix}.tasks.events.{t}"

    def task_cancel(self, task_id: str | None = None) -> str:
        """Core NATS: stop the running attempt of a task (`None`: any task's)."""
        t = "*" if task_id is None else validate_id(task_id, what="task id")
        return f"{self.prefix}.tasks.cancel.{t}"

    def tasks_nudge(self) -> str:
        """Core NATS: a task was queued; idle executors look at the queue now."""
        return f"{self.prefix}.tasks.nudge"

    def channel_replies(self) -> str:
        """Chat channels' reply jobs, `<p>.channels.replies` (gateway/channels/replies.py)."""
        return f"{self.prefix}.channels.replies"

    # The agent runtime (agents/runtime, broker/sessions.py) -------------------------------------
    def session_log(self, session_id: str | None = None) -> str:
        """A runtime session's turns, `<p>.sessions.log.<session_id>` (`None`: every session's)."""
        s = "*" if session_id is None else validate_id(session_id, what="session id")
        return f"{self.prefix}.sessions.log.{s}"

    def session_events(self) -> str:
        """Core NATS: a session's status changed (streaming, success, error, read, title)."""
        return f"{self.prefix}.sessions.events"

    def runtime_infer(self) -> str:
        """Ad-hoc inferences (`/v1/infer`, sub-agents), served by runtime workers in a queue
        group of the same name."""
        return f"{self.prefix}.runtime.infer"

    def runtime_abort(self) -> str:
        """Core NATS: abort the inference running for a session, on whichever worker runs it."""
        return f"{self.prefix}.runtime.abort"

    def runtime_changed(self) -> str:
        """Core NATS: a stored definition (agent, template, skill, tool) changed; workers
        re-read now instead of at their next poll."""
        return f"{self.prefix}.runtime.changed"

    def usage(self, key_id: str | None = None, model: str | None = None) -> str:
        """One LLM call's usage event, `agentmesh.usage.<p>.<key id>.<escaped model>`, kept in
        the JetStream stream `agentmesh_usage` with every mesh's. No other subject starts with
        `agentmesh.usage.` (a mesh's own are `<p>.<kind>...`, and no kind is `usage`).
        `None` gives the wildcard of this mesh's events.
        """
        if key_id is None:
            return f"agentmesh.usage.{self.prefix}.>"
        model_token = escape_token(model or "", what="model")
        return f"agentmesh.usage.{self.prefix}.{validate_id(key_id, what='key id')}.{model_token}"

    # Durable records (JetStream KV keys) -----------------------------------------------------
    def record(self, name: str, *, what: str = "name") -> str:
        """The KV key of a mesh's record (API key, webhook): `<p>.<name>`, `name` an id."""
        return f"{self.prefix}.{validate_id(name, what=what)}"

    # Redis keys ----------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))
