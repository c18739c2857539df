"""The Agent Service seed's examples, adapted only in their imports and in pointing at the mesh
(models are aliases LLM workers serve, MCP tools are served by MCP workers). Each runs with
`python -m agentmesh.agents.examples.runtime.<name>` against the mesh of AGENTMESH_NATS_URL;
MODEL names the model alias (default `echo`, the model `agentmesh up` always serves).
"""
