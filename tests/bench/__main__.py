"""`python -m tests.bench` (`make bench`): start local servers, run the benchmarks, report.

Prints the results as markdown and rewrites their section of docs/BENCHMARKS.md.
`--profile` instead profiles the SDK path at concurrency 64 and prints the profile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from broker.servers import NatsServer, RedisServer
from broker.settings import Settings
from tests.bench import bus, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument(
        "--profile", action="store_true", help="profile the SDK path at concurrency 64"
    )
    parser.add_argument(
        "--no-write", action="store_true", help=f"print only; leave {report.DOCS.name} alone"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        nats_server = NatsServer(data_dir=Path(tmp) / "nats")
        redis_server = RedisServer(data_dir=Path(tmp) / "redis")
        try:
            nats_server.start()
            redis_server.start()
            settings = Settings(
                nats_url=nats_server.url,
                redis_url=redis_server.url,
                prefix=f"bench{uuid.uuid4().hex[:8]}",
            )
            if args.profile:
                print(asyncio.run(bus.profile(settings)))
                return 0
            results = asyncio.run(bus.compare(settings))
            body = bus.section(results)  # needs nats-server for its version
        finally:
            redis_server.stop()
            nats_server.stop()
    print(body)
    if not args.no_write:
        report.write_section("bus", body)
        print(f"wrote {report.DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
