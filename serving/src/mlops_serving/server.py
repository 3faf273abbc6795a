"""`mlops-serving`: the web app under waitress (the production WSGI server)."""

from __future__ import annotations

import argparse
import logging
import os

from waitress import serve

from .app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlops-serving", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("MLOPS_WEB_HOST", "0.0.0.0"))  # noqa: S104 (a server)
    parser.add_argument("--port", type=int, default=int(os.environ.get("MLOPS_WEB_PORT", "8000")))
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("MLOPS_WEB_THREADS", "8"))
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(create_app(), host=args.host, port=args.port, threads=args.threads, ident="mlops-serving")


if __name__ == "__main__":
    main()
