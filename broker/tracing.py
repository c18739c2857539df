"""W3C trace context on the bus: spans only when the application installed a tracer provider.

Without a provider, OpenTelemetry's API would still create non-recording spans on every call;
skipping them keeps the hot path cheap. An incoming `traceparent` is always honoured.
"""

from __future__ import annotations

import os

from opentelemetry import trace

if os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
    trace.get_tracer_provider()  # loads the provider named in the environment


def tracing_enabled() -> bool:
    """True once the application has set a tracer provider.

    Reads the API's global directly: `trace.get_tracer_provider()` consults `os.environ` on
    every call until a provider is set, which is measurable on the hot path.
    """
    return trace._TRACER_PROVIDER is not None
