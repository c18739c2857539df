"""A2A 1.0 (with 0.3 compatibility) for every mesh agent, through the official `a2a-sdk`
(issue 13): the SDK's routes and dispatchers speak the protocol; `MeshRequestHandler` answers
from the mesh's durable tasks, so any replica serves any task.

    cards.py    an agent's A2A card from its registry card; the gateway's public URL
    convert.py  mesh ⇄ A2A types (messages, parts, a task record as a Task, stream events)
    directory.py  each agent's card, the directory (`/a2a`), the default agent's root card
    proxy.py    outside A2A agents through the gateway (`/a2a-proxy/<name>`), cards rewritten
    events.py   a task's event log as an A2A stream
    handler.py  the SDK's RequestHandler over the TaskStore
    push_configs.py  push notification configs and their delivery state (JetStream KV)
    push.py     push notifications delivered to the webhooks, by every replica (`delivering`)
    routes.py   the routes (`router`), with the gateway's auth and agent checks
"""

from agentmesh.gateway.a2a.push import delivering
from agentmesh.gateway.a2a.routes import router

__all__ = ["delivering", "router"]
