"""Fixtures of the CLI tests live in tests/conftest.py (`agentmesh_exe`)."""
