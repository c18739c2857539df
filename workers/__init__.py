"""Workers that serve shared services on the bus: LLM workers and MCP tool workers."""
