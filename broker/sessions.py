"""Runtime sessions in JetStream, so any runtime worker continues any session:

    agentmesh_sessions              KV      `<p>.<session_id>` → SessionInfo JSON (the index)
    agentmesh_<p>_session_log       stream  `<p>.sessions.log.<session_id>`: one message per
                                            completed turn, {"messages": [...]} in order

A turn is written once it completed (its user message, the assistant's answer and the tool
calls between), so a worker that dies mid-turn loses only that turn. Status changes are also
published on `<p>.sessions.events` (core NATS) for the gateway's live session feed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import ValidationError

from agentmesh.broker.durable import DurableState
from agentmesh.broker.subjects import Subjects, validate_id
from agentmesh.schemas.envelope import new_id
from agentmesh.schemas.errors import ErrorInfo, NotFound
from agentmesh.schemas.runtime import Message, SessionInfo, SessionStatus

logger = logging.getLogger(__name__)

SESSIONS_BUCKET = "agentmesh_sessions"


def new_session_id() -> str:
    return new_id("sess")


class SessionStore:
    def __init__(self, durable: DurableState, subjects: Subjects) -> None:
        self.durable = durable
        self.subjects = subjects
        self.stream = f"agentmesh_{subjects.prefix}_session_log"
        durable.add_stream(self.stream, [subjects.session_log()])
        self._bucket = durable.bucket(SESSIONS_BUCKET)

    def _key(self, session_id: str) -> str:
        return self.subjects.record(session_id, what="session id")

    async def create(
        self,
        *,
        session_id: str | None = None,
        agent_id: str | None = None,
        model_id: str | None = None,
        parent_id: str | None = None,
    ) -> SessionInfo:
        info = SessionInfo(
            session_id=validate_id(session_id or new_session_id(), what="session id"),
            agent_id=agent_id,
            model_id=model_id,
            parent_id=parent_id,
        )
        await self._bucket.put(self._key(info.session_id), info.model_dump(mode="json"))
        return info

    async def get(self, session_id: str) -> SessionInfo | None:
        raw = await self._bucket.get(self._key(session_id))
        if raw is None:
            return None
        try:
            return SessionInfo.model_validate(raw)
        except ValidationError:
            logger.warning("session %s: invalid record; ignored", session_id)
            return None

    async def require(self, session_id: str) -> SessionInfo:
        info = await self.get(session_id)
        if info is None:
            raise NotFound(f"no session {session_id!r}", details={"session_id": session_id})
        return info

    async def list(self, *, parent_id: str | None = None) -> list[SessionInfo]:
        """Sessions, newest first; top-level ones unless `parent_id` names a parent."""
        out = []
        for raw in (await self._bucket.scan(self.subjects.prefix)).values():
            try:
                info = SessionInfo.model_validate(raw)
            except ValidationError:
                continue
            if info.parent_id == parent_id:
                out.append(info)
        return sorted(out, key=lambda i: i.updated_at, reverse=True)

    async def history(self, session_id: str) -> list[Message]:
        """Every message of the session's completed turns, in order."""
        subject = self.subjects.session_log(session_id)
        messages: list[Message] = []
        if await self.durable.stream_state(self.stream) is None:
            return messages
        async for batch in self.durable.events(self.stream, subject, after=0):
            for event in batch:
                try:
                    turn = json.loads(event.data)
                    messages.extend(Message.model_validate(m) for m in turn["messages"])
                except (ValueError, KeyError, TypeError, ValidationError):
                    logger.warning("session %s: an unreadable turn (seq %d)", session_id, event.seq)
        return messages

    async def append_turn(self, session_id: str, messages: list[Message]) -> None:
        """Store one completed turn (JetStream acked), then count it in the index."""
        await self.durable.ensure_stream(self.stream)
        body = {"messages": [m.model_dump(mode="json", exclude_defaults=True) for m in messages]}
        await self.durable.append(
            self.stream,
            self.subjects.session_log(session_id),
            json.dumps(body, ensure_ascii=False).encode(),
        )
        await self.change(session_id, turns_added=1)

    async def change(
        self,
        session_id: str,
        *,
        status: SessionStatus | None = None,
        unread: bool | None = None,
        title: str | None = None,
        error: ErrorInfo | None = None,
        turns_added: int = 0,
    ) -> SessionInfo:
        """Update the index record and announce the change. A revoked session stays revoked:
        a later status (the aborted inference's own last one) is ignored.

        Raises:
            NotFound: no such session.
        """

        def apply(raw: dict[str, Any]) -> dict[str, Any]:
            info = SessionInfo.model_validate(raw)
            update: dict[str, Any] = {
                "updated_at": time.time(),
                "turns": info.turns + turns_added,
            }
            if status is not None and info.status is not SessionStatus.REVOKED:
                update["status"] = status
                update["error"] = error if status is SessionStatus.ERROR else None
            if unread is not None:
                update["unread"] = unread
            if title is not None:
                update["title"] = title
            return info.model_copy(update=update).model_dump(mode="json")

        try:
            new = await self._bucket.update(self._key(session_id), apply)
        except ValidationError:
            new = None
        if new is None:
            raise NotFound(f"no session {session_id!r}", details={"session_id": session_id})
        info = SessionInfo.model_validate(new)
        await self._announce(info)
        return info

    async def summarize(self, session_id: str, *, summary: str, summarized: int) -> None:
        """Keep the rolling summary that stands for the first `summarized` messages."""
        fields = {"summary": summary, "summarized": summarized}
        if await self._bucket.update(self._key(session_id), lambda raw: raw | fields) is None:
            raise NotFound(f"no session {session_id!r}", details={"session_id": session_id})

    async def delete(self, session_id: str) -> bool:
        """Remove the session, its turns and its sub-agents' sessions."""
        info = await self.get(session_id)
        if info is None:
            return False
        for child in await self.list(parent_id=session_id):
            await self.delete(child.session_id)
        await self.durable.purge(self.stream, self.subjects.session_log(session_id))
        await self._bucket.delete(self._key(session_id))
        return True

    async def _announce(self, info: SessionInfo) -> None:
        body = info.model_dump_json(include={"session_id", "status", "unread", "title", "turns"})
        try:
            await self.durable.nc.publish(self.subjects.session_events(), body.encode())
        except OSError:  # the live feed is best effort; the record is written
            logger.debug("session event for %s not published", info.session_id)
