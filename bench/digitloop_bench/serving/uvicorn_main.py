"""The command line of the uvicorn servers of the bench (the FastAPI baseline, the floor):
both run as uvicorn's docs advise for speed, so only what is behind the app differs."""

from __future__ import annotations

import argparse


def serve(app: str, description: str, factory: bool = False) -> None:
    """Parse ``--host``, ``--port`` and ``--workers`` and run ``app`` ("module:attribute")
    with uvloop and httptools, no access log, log level warning."""
    import uvicorn

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(
        app,
        factory=factory,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
