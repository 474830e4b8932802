"""Click options shared by several commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.layout import DEFAULT_INDEX_DIR

F = Callable[..., Any]


def index_dir_option(func: F) -> F:
    return click.option(
        "--index-dir",
        type=click.Path(file_okay=False),
        default=str(DEFAULT_INDEX_DIR),
        show_default=True,
        envvar="BMSEARCH_INDEX_DIR",
        help="Folder holding the indexes.",
    )(func)


def output_options(func: F) -> F:
    func = click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary on stderr.")(func)
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(func)


def record_option(func: F) -> F:
    return click.option(
        "--record",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Append a markdown section with the figures to this file (e.g. docs/benchmarks.md).",
    )(func)


def bench_output_options(func: F) -> F:
    """--json, --record and --quiet, as every benchmark takes them."""
    func = click.option("--quiet", is_flag=True, help="No progress on stderr.")(func)
    func = record_option(func)
    return click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")(func)


def device_option(func: F) -> F:
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where to run the model.",
    )(func)


HTTP_PARSERS = ("auto", "h11", "httptools")  # uvicorn's --http choices (auto: httptools when installed)
EVENT_LOOPS = ("auto", "asyncio", "uvloop")  # uvicorn's --loop choices (auto: uvloop when installed)


def uvicorn_options(func: F) -> F:
    """--http and --loop, uvicorn's choices, as `serve` and `bench serve` take them."""
    func = click.option(
        "--loop",
        type=click.Choice(EVENT_LOOPS),
        default="auto",
        show_default=True,
        help="uvicorn's event loop (auto: uvloop when installed).",
    )(func)
    return click.option(
        "--http",
        type=click.Choice(HTTP_PARSERS),
        default="auto",
        show_default=True,
        help="uvicorn's HTTP parser (auto: httptools when installed).",
    )(func)


BACKENDS = ("auto", "torch", "onnx", "onnx-int8")  # pipeline.encode.BACKENDS, kept here so --help stays light


def backend_option(
    default: str = "auto", help: str = "Encoder runtime; auto: torch on GPU, the measured-best ONNX path on CPU."
) -> Callable[[F], F]:
    return click.option("--backend", type=click.Choice(BACKENDS), default=default, show_default=True, help=help)


def data_dir_option(func: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Shared data folder [default: $BMSEARCH_SHARED_DATA or ../shared/data].",
    )(func)


def parse_size(text: str | None) -> int | None:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise click.BadParameter(f"{text!r} is not a size such as 512M or 4G")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def lead_margin_option(func: F) -> F:
    return click.option(
        "--lead-margin",
        default=None,
        metavar="FRACTION|off",
        callback=_lead_margin,
        help="Hybrid: BM25's top hit takes rank 1 when it scores this fraction above BM25's second "
        "[default: the library's, 0.15]; off: plain fusion.",
    )(func)


def sole_match_option(func: F) -> F:
    return click.option(
        "--lead-sole-match/--no-lead-sole-match",
        default=None,
        help="Hybrid: BM25's top hit also takes rank 1 when it is the only document holding every query term "
        "(codes, names; costs natural questions a little, see docs/quality.md) [default: off].",
    )(func)


class LeadOff:
    """--lead-margin off, told apart from the option not being given (None)."""


def _lead_margin(ctx: click.Context, param: click.Parameter, text: str | None) -> float | type[LeadOff] | None:
    if text is None:
        return None
    if text.strip().lower() == "off":
        return LeadOff
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a fraction nor off") from None
    if not 0 <= value <= 1:
        raise click.BadParameter("use a fraction between 0 and 1, or off")
    return value


def with_lead_rules(config: Any, lead: float | type[LeadOff] | None, sole_match: bool | None = None) -> Any:
    """The fusion config with --lead-margin and --lead-sole-match applied (each unchanged when not given)."""
    from dataclasses import replace

    if lead is not None:
        config = replace(config, lead_margin=None if lead is LeadOff else lead)
    if sole_match is not None:
        config = replace(config, lead_sole_match=sole_match)
    return config


SEARCH_MODES = ("dense", "lexical", "hybrid")  # pipeline.search.MODES, kept here so the CLI imports no numpy


def mode_option(help: str) -> Callable[[F], F]:
    """--mode dense|lexical|hybrid."""
    return click.option("--mode", type=click.Choice(SEARCH_MODES), default="dense", show_default=True, help=help)


def hybrid_options(func: F) -> F:
    """--fusion, --weights, --lead-margin and --lead-sole-match: how hybrid mode fuses (see `hybrid_config`)."""
    func = sole_match_option(func)
    func = lead_margin_option(func)
    func = click.option(
        "--weights",
        default=None,
        help="Hybrid weights, e.g. dense=1,lexical=0.2 (the default); a mode not named keeps its default.",
    )(func)
    return click.option(
        "--fusion",
        type=click.Choice(["rrf", "minmax", "zscore"]),
        default=None,
        help="How hybrid mode fuses the two lists [default: zscore, measured in docs/quality.md].",
    )(func)


def hybrid_config(
    method: str | None, weights: str | None, lead: float | type[LeadOff] | None, sole_match: bool | None
) -> Any:
    """The FusionConfig of the `hybrid_options` given (the library's defaults for those not given).

    --weights names only the modes it changes: `dense=1` keeps the default lexical weight.
    """
    from dataclasses import replace

    from pipeline.fusion import FusionConfig

    config = FusionConfig()
    if method:
        config = replace(config, method=method)
    if weights:
        config = replace(config, weights={**config.weights, **parse_weights(weights)})
    return with_lead_rules(config, lead, sole_match)


def parse_weights(text: str) -> dict[str, float]:
    """'dense=1,lexical=0.5' -> {'dense': 1.0, 'lexical': 0.5}; only the modes named."""
    parsed = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            parsed[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not mode=weight", param_hint="--weights") from None
    unknown = set(parsed) - {"dense", "lexical"}
    if unknown:
        raise click.BadParameter(f"unknown mode(s) {', '.join(sorted(unknown))}", param_hint="--weights")
    return parsed
