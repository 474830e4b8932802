"""The CLI starts instantly, and model resolution is fast and explicit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ModelError
from pipeline.model import directory_hash, resolve_model


def test_help_does_not_import_torch_or_faiss() -> None:
    code = (
        "import sys; from pipeline.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'faiss', 'transformers', 'duckdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert "index" in out and "query" in out and "serve" in out


def test_local_model_identity_is_a_content_hash(tiny_model: Path, tmp_path: Path) -> None:
    ref = resolve_model(str(tiny_model))
    assert ref.source == "local" and ref.content_hash == directory_hash(tiny_model) and ref.revision is None
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(tiny_model), str(copy)], check=True)
    assert resolve_model(str(copy)).fingerprint == ref.fingerprint
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert resolve_model(str(copy)).fingerprint != ref.fingerprint


def test_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_hub_model_in_the_cache_resolves_offline(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(tiny_model), str(snapshot)], check=True)
    refs = tmp_path / "hub" / "models--acme--tiny" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    ref = resolve_model("acme/tiny")
    assert ref.source == "hub" and ref.revision == "a" * 40 and Path(ref.path) == snapshot


def test_every_command_and_bench_subcommand_loads() -> None:
    from click.testing import CliRunner

    from pipeline.cli import COMMANDS, cli
    from pipeline.cli.bench_cmd import SUBCOMMANDS

    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, (name, result.output)
    for name in SUBCOMMANDS:
        result = runner.invoke(cli, ["bench", name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, (name, result.output)
    for name in ("sts", "retrieval"):
        assert runner.invoke(cli, ["eval", name, "--help"]).exit_code == 0


def test_search_modes_agree_across_cli_library_and_server() -> None:
    from typing import get_args

    from pipeline.cli.options import SEARCH_MODES
    from pipeline.search import MODES
    from pipeline.server import SearchRequest

    assert SEARCH_MODES == MODES == get_args(SearchRequest.model_fields["mode"].annotation)
