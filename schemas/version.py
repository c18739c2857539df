"""The distribution's version: one place, low enough that every layer may read it.

pyproject.toml reads it from here (`[tool.setuptools.dynamic]`); the facade re-exports it as
`agentmesh.__version__`; the gateway reports it in `/gateway/status`.
"""

__version__ = "0.1.0"
