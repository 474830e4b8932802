"""`bmsearch serve`: the query server (FastAPI app from pipeline.server) run by uvicorn."""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

import click

from pipeline.cli.options import (
    LeadOff,
    device_option,
    hybrid_config,
    hybrid_options,
    index_dir_option,
    uvicorn_options,
)
from pipeline.cli.output import handle_errors


@click.command()
@click.option("--index", "-i", "indexes", multiple=True, help="Index to serve (repeatable; default: every index).")
@index_dir_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; loopback by default.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key",
    envvar="BMSEARCH_API_KEY",
    default=None,
    help="Require this key (X-API-Key or Authorization: Bearer) on every request [env: BMSEARCH_API_KEY].",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Most requests encoded together in one encoder call.",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0, 1000),
    default=None,
    help="How long a batch waits for more requests after its first [default: 0 with several --workers, 5 with one].",
)
@click.option(
    "--reload-interval",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between checks for a newer index generation (0: no hot reload).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=1 << 20,
    show_default=True,
    help="Larger request bodies get 413.",
)
@click.option("--model", "-m", default=None, help="Model to encode with; must match the indexes' manifests.")
@device_option
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per batch for the encoder and FAISS [default on a CPU: 1, as queries are short and "
    "batches run side by side; behind a GPU, FAISS gets every core].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Batches processed at once [default: one per CPU core; 1 on a GPU].",
)
@click.option(
    "--gc-freeze/--no-gc-freeze",
    default=True,
    show_default=True,
    help="Once loaded, keep the loaded model and indexes out of Python's cyclic GC, whose full passes over "
    "them stall requests.",
)
@hybrid_options
@uvicorn_options
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@handle_errors
def serve(
    indexes: tuple[str, ...],
    index_dir: str,
    host: str,
    port: int,
    api_key: str | None,
    max_batch: int,
    max_wait_ms: float | None,
    reload_interval: float,
    max_body_bytes: int,
    model: str | None,
    device: str,
    threads: int | None,
    workers: int | None,
    gc_freeze: bool,
    fusion: str | None,
    weights: str | None,
    lead_margin: float | type[LeadOff] | None,
    lead_sole_match: bool | None,
    http: str,
    loop: str,
    log_level: str,
) -> None:
    """Serve indexes over HTTP: POST /search, GET /indexes, /health, /metrics, /docs.

    Concurrent requests are micro-batched into one encoder call; a generation committed by a later
    `bmsearch index` run is picked up without restart.
    """
    import logging

    fusion_config = hybrid_config(fusion, weights, lead_margin, lead_sole_match)
    _check_indexes(index_dir, indexes)
    _check_bind(host, port)

    import uvicorn

    from pipeline.server import ServerConfig, create_app

    if not _is_loopback(host) and not api_key:
        click.echo(f"Warning: serving on {host} without --api-key; anyone who can reach it can query.", err=True)
    logging.getLogger("pipeline").setLevel(log_level.upper())
    config = ServerConfig(
        index_dir=Path(index_dir),
        indexes=list(indexes) or None,
        api_key=api_key or None,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        device=device,
        model=model,
        reload_interval_s=reload_interval,
        max_body_bytes=max_body_bytes,
        threads=threads,
        workers=workers,
        freeze_gc=gc_freeze,
        fusion=fusion_config,
    )
    try:
        uvicorn.run(
            create_app(config),
            host=host,
            port=port,
            http=http,
            loop=loop,
            log_level=log_level,
            access_log=log_level == "debug",
        )
    except SystemExit as exc:
        # uvicorn calls sys.exit(3) when it cannot start (a bind failure the checks above could not foresee)
        if exc.code not in (0, None):
            message = f"the server could not start on {host}:{port} (uvicorn exited with code {exc.code})"
            raise click.ClickException(message) from None
        raise


def _check_indexes(index_dir: str, names: tuple[str, ...]) -> None:
    """Fail now, with the usual one-line error, if an index to serve is missing or has no live generation.

    The server loads its indexes in the background after binding, where a failure is only logged.
    """
    from pipeline.layout import serving_paths

    for p in serving_paths(index_dir, names):
        p.require_current()


def _check_bind(host: str, port: int) -> None:
    """Refuse a host that does not resolve or a port already taken, before the model loads.

    uvicorn would log the error and exit with code 3. Each address is bound as asyncio's create_server
    binds it (SO_REUSEADDR, IPv6 only on IPv6 sockets), so a port in TIME_WAIT is not reported as taken.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot resolve host {host!r} ({exc.strerror})") from None
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise click.ClickException(f"port {port} on {host} is in use") from None
                raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
