"""LLM workers: one OpenAI-shaped API over several providers, served on the bus per alias."""
