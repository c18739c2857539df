"""A2A 1.0 (with 0.3 compatibility) for every mesh agent, through the official `a2a-sdk`
(issue 13): the SDK's routes and dispatchers speak the protocol; `MeshRequestHandler` answers
from the mesh's durable tasks, so any replica serves any task.

    cards.py    an agent's A2A card from its registry card; the gateway's public URL
    convert.py  mesh ⇄ A2A types (messages, parts, a task record as a Task, stream events)
    events.py   a task's event log as an A2A stream
    handler.py  the SDK's RequestHandler over the TaskStore
    routes.py   the routes (`router`), with the gateway's auth and agent checks
"""

from agentmesh.gateway.a2a.routes import router

__all__ = ["router"]
