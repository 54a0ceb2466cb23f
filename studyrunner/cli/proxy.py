"""``studyrunner storage-proxy URL``: one process that holds the study database's connections for
every worker started with ``--storage grpc://HOST:PORT`` (see ``studyrunner.search.proxy``)."""

from __future__ import annotations

from typing import Annotated

import typer

from studyrunner.cli.guards import user_errors

__all__ = ["storage_proxy", "PROXY_HELP"]

PROXY_HELP = "Serve a study database to workers over gRPC (--storage grpc://HOST:PORT): few database connections."


@user_errors
def storage_proxy(
    url: Annotated[str, typer.Argument(help="The study database: postgresql://..., mysql://... or sqlite:///PATH.db.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network (no TLS, no auth).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 13000,
) -> None:
    """Serve the study database URL to workers started with --storage grpc://HOST:PORT, until
    Ctrl-C or SIGTERM. The proxy has no TLS and no authentication: keep it inside a private network."""
    from studyrunner.search.proxy import serve_proxy

    serve_proxy(url, host, port, say=lambda line: print(line, flush=True))
