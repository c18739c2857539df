"""The stateless gateway: HTTP, WebSocket and webhook ingress into the mesh."""

from agentmesh.gateway.client import GatewayClient

__all__ = ["GatewayClient"]
