"""The stateless gateway: HTTP, WebSocket and webhook ingress into the mesh."""
