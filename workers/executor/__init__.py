"""The executor service: runs durable tasks as mesh calls (`agentmesh worker executor`)."""

from agentmesh.workers.executor.worker import Executor

__all__ = ["Executor"]
