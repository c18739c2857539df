"""Running a gateway replica under uvicorn (`agentmesh gateway`, `agentmesh up`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn

from broker.settings import Settings
from gateway.app import create_app
from gateway.state import GatewayConfig

DEFAULT_PORT = 8001


class GatewayServer(uvicorn.Server):
    """uvicorn without its own signal capture: whoever runs it (`up`, `agentmesh gateway`, a
    test) owns SIGINT/SIGTERM and stops it with `should_exit`, in its own shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    config: GatewayConfig | None = None,
    log_level: str = "info",
) -> GatewayServer:
    config = config or GatewayConfig.from_env()
    app = create_app(settings, config)
    return GatewayServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="on",
            ws_max_size=config.max_body_bytes,
            ws_ping_interval=20,
            ws_ping_timeout=20,
            timeout_keep_alive=30,
            server_header=False,
            access_log=False,
        )
    )
