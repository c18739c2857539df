"""Outside A2A agents as mesh agents (`agentmesh worker a2a`, issue 13): the bridge reads each
agent's card with the official `a2a-sdk` client and serves the agent under a mesh agent id.

    config.py   the mesh file's `a2a:` section (agent id, URL, headers per outside agent)
    cards.py    an A2A card as the mesh card
    remote.py   one outside agent through the SDK's client: send, stream, cancel; its errors
    replies.py  what the agent answered (a Message, a Task in a state) as the mesh reply
    pending.py  which remote task a conversation's next message continues (input-required)
    bridge.py   `A2ABridge`: the agents as served subjects with registry records
"""

from agentmesh.workers.a2a.bridge import A2ABridge
from agentmesh.workers.a2a.config import A2ASection, OutsideAgent

__all__ = ["A2ABridge", "A2ASection", "OutsideAgent"]
