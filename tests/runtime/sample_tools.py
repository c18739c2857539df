"""Function tools a runtime worker loads from its mesh file (`runtime.function_tools`)."""

from agentmesh.agents.runtime import function_tool


@function_tool
def lookup(key: str) -> str:
    """Look a key up in the inventory."""
    return f"inventory[{key}] = 42"


@function_tool(name="shout", description="Upper-case a text.")
def upper(text: str) -> str:
    return text.upper()


TOOLS = [lookup, upper]
