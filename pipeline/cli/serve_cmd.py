"""`bmsearch serve`: the query server (FastAPI app from pipeline.server) run by uvicorn."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from pipeline.cli.options import device_option, index_dir_option
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
    default=5.0,
    show_default=True,
    help="How long a batch waits for more requests after its first.",
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
    help="CPU threads for the encoder and FAISS [default: all cores]; 1 is best on a busy machine.",
)
@click.option(
    "--gc-freeze/--no-gc-freeze",
    default=True,
    show_default=True,
    help="Once loaded, keep the loaded model and indexes out of Python's cyclic GC, whose full passes over "
    "them stall requests.",
)
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
    max_wait_ms: float,
    reload_interval: float,
    max_body_bytes: int,
    model: str | None,
    device: str,
    threads: int | None,
    gc_freeze: bool,
    log_level: str,
) -> None:
    """Serve indexes over HTTP: POST /search, GET /indexes, /health, /metrics, /docs.

    Concurrent requests are micro-batched into one encoder call; a generation committed by a later
    `bmsearch index` run is picked up without restart.
    """
    import logging

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
        freeze_gc=gc_freeze,
    )
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, access_log=log_level == "debug")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
