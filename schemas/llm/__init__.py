"""The LLM wire formats the gateway and the LLM workers share: OpenAI chat completions (the
mesh's canonical shape) ⇄ Anthropic Messages, requests, replies and streams. Translation only,
no I/O: the `anthropic` provider and the gateway's `POST /v1/messages` both import it.
"""
