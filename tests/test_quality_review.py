"""Regression tests from the quality review: score scaling, softmax resume, --overwrite, lexical-less index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import DataError
from pipeline.finetune import FinetuneConfig, build_training_columns, checkpoint_dir, finetune
from pipeline.training_data import Columns, read_table
from tests.test_finetune import FAST, Interrupted, StopAt, nli_rows, write_parquet


def test_table_scores_already_on_0_1_are_not_stretched(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"sentence1": ["a", "b", "c"], "sentence2": ["d", "e", "f"], "score": [0.2, 0.5, 0.8]}), path
    )
    targets = build_training_columns(read_table(path, Columns()), "cosine")["score"]
    assert targets == pytest.approx([0.2, 0.5, 0.8])


@pytest.fixture
def one_thread() -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_overwrite_keeps_checkpoints_when_the_new_run_fails_on_input(
    tiny_model: Path, tmp_path: Path, one_thread: Any
) -> None:
    nli = write_parquet(tmp_path / "nli.parquet", nli_rows(6))
    out = tmp_path / "m"
    config = FinetuneConfig(
        base=str(tiny_model), train=str(nli), out=str(out), loss="softmax", max_steps=3, save_steps=2, **FAST
    )
    with pytest.raises(Interrupted):
        finetune(config, callbacks=[StopAt(3)])
    bad = FinetuneConfig(base=str(tiny_model), train=str(tmp_path / "missing.parquet"), out=str(out), overwrite=True)
    with pytest.raises(DataError):
        finetune(bad)
    assert [p.name for p in checkpoint_dir(out).glob("checkpoint-*")] == ["checkpoint-2"]


class SnapshotOnSave:
    """Copies the loss's own (non-model) parameters when a checkpoint is written."""

    def __init__(self, losses: list[Any]) -> None:
        self.losses = losses
        self.saved: dict[int, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def snapshot(self, step: int) -> None:
        loss = self.losses[-1]
        self.saved[step] = {k: v.detach().clone() for k, v in loss.state_dict().items() if not k.startswith("model.")}

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.snapshot(state.global_step)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.snapshot(-1)  # after the trainer has loaded the checkpoint, before any step


def test_softmax_resume_restores_the_classifier_head(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: Any
) -> None:
    import torch

    from pipeline import finetune as ft

    made: list[Any] = []
    real = ft._make_loss

    def recording(model: Any, name: str) -> Any:
        made.append(real(model, name))
        return made[-1]

    monkeypatch.setattr(ft, "_make_loss", recording)
    nli = write_parquet(tmp_path / "nli.parquet", nli_rows(6))
    out = tmp_path / "m"
    config = FinetuneConfig(
        base=str(tiny_model), train=str(nli), out=str(out), loss="softmax", max_steps=4, save_steps=2, **FAST
    )
    snap = SnapshotOnSave(made)
    with pytest.raises(Interrupted):
        finetune(config, callbacks=[snap, StopAt(3)])
    config.resume = True
    resumed = SnapshotOnSave(made)
    result = finetune(config, callbacks=[resumed])
    assert result.steps == 4 and len(made) == 2
    head = resumed.saved[-1]  # the resumed run's head as its first step starts: the checkpoint's
    assert head and set(head) == set(snap.saved[2])
    for key, value in snap.saved[2].items():
        assert torch.equal(head[key].cpu(), value.cpu()), key


def test_eval_retrieval_lexical_on_index_without_lexical_side(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("bm25s")
    from tests.helpers import run
    from tests.test_retrieval_eval import invoke, tiny_beir

    folder = tiny_beir(tmp_path / "tiny-set")
    index_dir = tmp_path / "indexes"
    built = invoke("--beir", folder, "--model", tiny_model, "--backend", "torch", "--index-dir", index_dir, "-q")
    assert built.exit_code == 0, built.output
    gen = next((index_dir / "tiny-set").glob("gen-*"))
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["lexical"] = None
    (gen / "manifest.json").write_text(json.dumps(manifest))
    result = run("eval", "retrieval", "--beir", folder, "--index-dir", index_dir, "--modes", "lexical", "-q")
    assert result.exit_code == 2 and "no lexical side" in result.stderr, result.output
    shutil.rmtree(gen / "lexical")
    result = run("eval", "retrieval", "--beir", folder, "--index-dir", index_dir, "--modes", "dense,hybrid", "-q")
    assert result.exit_code == 2 and "no lexical side" in result.stderr, result.output


class _Model:
    def __init__(self, text: str) -> None:
        self.text = text

    def save(self, path: str, create_model_card: bool = False) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "weights.txt").write_text(self.text)


class _Result:
    def to_dict(self) -> dict[str, Any]:
        return {"steps": 1, "log_history": []}


def test_a_failed_swap_puts_the_previous_model_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    from types import SimpleNamespace

    from pipeline import finetune as ft

    monkeypatch.setattr(ft, "model_card", lambda *_: "card")
    out = tmp_path / "model"
    config: Any = SimpleNamespace(loss="cosine")
    ft._save_atomically(_Model("v1"), out, config, _Result(), None)  # type: ignore[arg-type]
    real_replace, calls = os.replace, []

    def failing_second(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(ft.os, "replace", failing_second)
    with pytest.raises(OSError):
        ft._save_atomically(_Model("v2"), out, config, _Result(), None)  # type: ignore[arg-type]
    assert (out / "weights.txt").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    monkeypatch.setattr(ft.os, "replace", real_replace)
    as_file = tmp_path / "file-out"
    as_file.write_text("not a model")
    ft._save_atomically(_Model("v3"), as_file, config, _Result(), None)  # type: ignore[arg-type]
    assert (as_file / "weights.txt").read_text() == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file-out", "model"]  # no hidden .old left
