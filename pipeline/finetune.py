"""Fine-tune a sentence embedding model on NLI or scored pairs with sentence-transformers' trainer."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError, OutputExistsError, UsageError
from pipeline.fsutil import fsync_dir, fsync_tree
from pipeline.model import load_sentence_transformer, resolve_model
from pipeline.progress import NoProgress, Progress
from pipeline.training_data import NLI_LABELS, Columns, PairData, load_pairs

LOSSES = ("mnrl", "softmax", "cosine")
LOSS_NAMES = {
    "mnrl": "MultipleNegativesRankingLoss",
    "softmax": "SoftmaxLoss",
    "cosine": "CosineSimilarityLoss",
}
_MIN_EXAMPLES = 2
DEV_METRIC = "dev_spearman_cosine"


@dataclass
class FinetuneConfig:
    """What to train, on what, and how; defaults follow the sentence-transformers NLI recipe."""

    base: str
    train: str
    out: str
    loss: str = "mnrl"
    format: str = "auto"
    split: str | None = None
    columns: Columns = field(default_factory=Columns)
    dev: str | None = None
    dev_format: str = "auto"
    dev_split: str | None = None
    dev_columns: Columns = field(default_factory=Columns)  # a table dev set's sentence1/sentence2/score names
    epochs: float = 1.0
    batch_size: int = 64
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    max_steps: int | None = None
    seed: int = 42
    max_seq_length: int | None = None
    save_steps: int = 500
    eval_steps: int | None = None  # None: same as save_steps
    logging_steps: int | None = None  # None: about 20 points over the run
    max_examples: int | None = None  # use only the first N training examples
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False


@dataclass
class FinetuneResult:
    """What a run did and measured; also written beside the model as bmsearch_finetune.json."""

    out: str
    base: str
    loss: str
    train_source: str
    train_format: str
    train_examples: int
    steps: int
    epochs: float
    seconds: float
    examples_per_s: float
    device: str
    precision: str
    train_loss_start: float | None
    train_loss_end: float | None
    dev_before: float | None
    dev_after: float | None
    resumed_from: str | None
    log_history: list[dict[str, Any]]
    train_split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_dir(out: str | Path) -> Path:
    """Where a run's checkpoints live: beside the output directory, so --resume finds them."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


def finetune(
    config: FinetuneConfig, progress: Progress | None = None, callbacks: list[Any] | None = None
) -> FinetuneResult:
    """Train config.base on config.train with config.loss and save the model atomically to config.out."""
    progress = progress or NoProgress()
    if config.loss not in LOSSES:
        raise UsageError(f"unknown loss {config.loss!r}: use one of {', '.join(LOSSES)}")
    _check_numbers(config)
    out = Path(config.out)
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"cannot write {out}: {blocker} is a file, not a directory")
    if out.exists() and not config.overwrite:
        raise OutputExistsError(f"output directory {out} exists; pass --overwrite to replace it")
    ckpt_root = checkpoint_dir(out)
    last = _last_checkpoint(ckpt_root)
    if config.resume and last is None:
        raise UsageError(f"--resume given but there is no checkpoint under {ckpt_root}")
    if last is not None and not config.resume and not config.overwrite:
        raise UsageError(
            f"checkpoints of an earlier run exist in {ckpt_root}; pass --resume to continue it "
            "or --overwrite to start over"
        )

    data = load_pairs(config.train, config.format, config.split, config.columns)
    if config.max_examples:
        data = _head(data, config.max_examples)
    columns = build_training_columns(data, config.loss)
    dev = _dev_pairs(config)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pipeline.encode import resolve_device

    device = resolve_device(config.device)
    model = load_sentence_transformer(resolve_model(config.base), device, config.max_seq_length)
    if last is not None and not config.resume:
        # --overwrite: the earlier run's checkpoints go only once the new run's data and model have loaded
        shutil.rmtree(ckpt_root)
        last = None
    from datasets import Dataset

    train_dataset = Dataset.from_dict(columns)
    n_examples = len(train_dataset)
    loss = _make_loss(model, config.loss)
    if last is not None:
        _load_loss_state(loss, last)
    evaluator = _make_evaluator(dev, config.batch_size) if dev is not None else None
    args, precision = _training_args(config, ckpt_root, device, n_examples)

    dev_before = float(evaluator(model)[DEV_METRIC]) if evaluator is not None and last is None else None
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    reporter: Any = _ProgressReporter(progress)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=[reporter, _LossStateSaver(loss), *(callbacks or [])],
    )
    # The library never prints: drop the trainer's own tqdm bar and log printer.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    started = time.monotonic()
    try:
        trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
    finally:
        progress.close()
    seconds = time.monotonic() - started
    dev_after = float(evaluator(model)[DEV_METRIC]) if evaluator is not None else None

    history = [dict(h) for h in trainer.state.log_history]
    losses = [float(h["loss"]) for h in history if "loss" in h]
    steps = int(trainer.state.global_step)
    done_here = steps - _checkpoint_step(last)
    result = FinetuneResult(
        out=str(out),
        base=config.base,
        loss=config.loss,
        train_source=data.source,
        train_format=data.format,
        train_examples=n_examples,
        steps=steps,
        epochs=float(trainer.state.epoch or 0.0),
        seconds=round(seconds, 2),
        examples_per_s=round(done_here * config.batch_size / max(seconds, 1e-9), 2),
        device=device,
        precision=precision,
        train_loss_start=losses[0] if losses else None,
        train_loss_end=losses[-1] if losses else None,
        dev_before=dev_before,
        dev_after=dev_after,
        resumed_from=last.name if last else None,
        log_history=history,
        train_split=data.split,
    )
    _save_atomically(model, out, config, result, dev)
    if not config.keep_checkpoints:
        shutil.rmtree(ckpt_root, ignore_errors=True)
    return result


def build_training_columns(data: PairData, loss: str) -> dict[str, list[Any]]:
    """The dataset columns each loss expects, in the order sentence-transformers feeds them."""
    if loss in ("mnrl", "softmax") and data.labels is None:
        raise DataError(f"loss {loss} needs NLI labels, but {data.source} ({data.format}) has only scores")
    if loss == "cosine" and data.scores is None:
        raise DataError(f"loss cosine needs similarity scores, but {data.source} ({data.format}) has only labels")
    if loss == "mnrl":
        columns: dict[str, list[Any]] = nli_triplets(data)
        what = "(anchor, entailment, contradiction) triplets"
    elif loss == "softmax":
        assert data.labels is not None
        columns = {"sentence1": data.sentence1, "sentence2": data.sentence2, "label": data.labels}
        what = "labelled pairs"
    else:
        columns = {"sentence1": data.sentence1, "sentence2": data.sentence2, "score": data.unit_scores()}
        what = "scored pairs"
    n = len(next(iter(columns.values())))
    if n < _MIN_EXAMPLES:
        raise DataError(f"loss {loss} needs at least {_MIN_EXAMPLES} {what}; {data.source} gives {n}")
    return columns


def nli_triplets(data: PairData) -> dict[str, list[str]]:
    """(premise, entailed, contradicted) triplets from NLI pairs grouped by premise."""
    assert data.labels is not None
    entailed: dict[str, list[str]] = defaultdict(list)
    contradicted: dict[str, list[str]] = defaultdict(list)
    for premise, hypothesis, label in zip(data.sentence1, data.sentence2, data.labels, strict=True):
        if label == NLI_LABELS.index("entailment"):
            entailed[premise].append(hypothesis)
        elif label == NLI_LABELS.index("contradiction"):
            contradicted[premise].append(hypothesis)
    out: dict[str, list[str]] = {"anchor": [], "positive": [], "negative": []}
    for premise, positives in entailed.items():
        negatives = contradicted.get(premise)
        if not negatives:
            continue
        for i, positive in enumerate(positives):
            out["anchor"].append(premise)
            out["positive"].append(positive)
            out["negative"].append(negatives[i % len(negatives)])
    return out


def _check_numbers(config: FinetuneConfig) -> None:
    if config.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if config.epochs <= 0 and not config.max_steps:
        raise UsageError("--epochs must be positive (or give --max-steps)")
    if config.max_steps is not None and config.max_steps < 1:
        raise UsageError("--max-steps must be at least 1")
    if not 0 <= config.warmup_ratio < 1:
        raise UsageError("--warmup-ratio must lie in [0, 1)")
    if config.lr <= 0:
        raise UsageError("--lr must be positive")
    if config.save_steps < 1:
        raise UsageError("--save-steps must be at least 1")
    if config.max_examples is not None and config.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")


def _head(data: PairData, n: int) -> PairData:
    return PairData(
        data.sentence1[:n],
        data.sentence2[:n],
        labels=data.labels[:n] if data.labels else None,
        scores=data.scores[:n] if data.scores else None,
        score_range=data.score_range,
        source=data.source,
        format=data.format,
        split=data.split,
    )


def _dev_pairs(config: FinetuneConfig) -> PairData | None:
    if not config.dev:
        return None
    try:
        # SICK: neither its train split (load_pairs' default) nor its test split
        dev = load_pairs(config.dev, config.dev_format, config.dev_split, config.dev_columns, {"sick": "trial"})
    except DataError as exc:
        raise DataError(f"dev set: {exc}") from exc
    if dev.scores is None:
        raise DataError(f"dev set {config.dev} has no similarity scores (use STS or SICK, or a score column)")
    if len(dev) < 3:
        raise DataError(f"dev set {config.dev} has {len(dev)} pairs; a Spearman needs at least 3")
    return dev


def _make_loss(model: Any, name: str) -> Any:
    from sentence_transformers.sentence_transformer import losses

    if name == "mnrl":
        return losses.MultipleNegativesRankingLoss(model)
    if name == "softmax":
        return losses.SoftmaxLoss(model, model.get_embedding_dimension(), num_labels=len(NLI_LABELS))
    return losses.CosineSimilarityLoss(model)


def _make_evaluator(dev: PairData, batch_size: int) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    return EmbeddingSimilarityEvaluator(
        dev.sentence1,
        dev.sentence2,
        dev.unit_scores(),
        batch_size=min(batch_size, 64),
        main_similarity="cosine",
        similarity_fn_names=["cosine"],
        name="dev",
        write_csv=False,
    )


def _training_args(config: FinetuneConfig, root: Path, device: str, n_examples: int) -> tuple[Any, str]:
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    cuda = device.startswith("cuda")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    steps_per_epoch = math.ceil(n_examples / config.batch_size)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    logging_steps = config.logging_steps or max(1, min(50, total // 20))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(root),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.lr,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the run
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        use_cpu=not cuda,
        # MNRL takes the other rows of a batch as negatives: a duplicate text would be a false negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES if config.loss == "mnrl" else BatchSamplers.BATCH_SAMPLER,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if config.dev else "no",
        eval_steps=config.eval_steps or config.save_steps,
        logging_strategy="steps",
        logging_steps=logging_steps,
        logging_first_step=False,  # start and end losses are then both means over a logging window
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
    )
    return args, "bf16" if bf16 else "fp32"


def _trainer_class() -> Any:
    """SentenceTransformerTrainer without its model-card callback: we write our own card, and the
    callback tokenises samples of the data and draws a tqdm bar at start-up."""
    from sentence_transformers import SentenceTransformerTrainer

    class _Trainer(SentenceTransformerTrainer):
        def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
            pass

    return _Trainer


class _ProgressReporter:
    """A TrainerCallback that reports optimizer steps to a Progress (duck-typed to keep imports lazy)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress.stage("fine-tune", total=int(state.max_steps), unit="steps")
        self.seen = int(state.global_step)
        if self.seen:
            self.progress.advance(self.seen)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = int(state.global_step)
        if step > self.seen:
            self.progress.advance(step - self.seen)
            self.seen = step


LOSS_STATE = "bmsearch_loss_state.pt"


def _loss_state(loss: Any) -> dict[str, Any]:
    """The loss's own parameters (SoftmaxLoss's classifier head), without the model's: the trainer's
    checkpoints hold only the model, so a resumed run would otherwise restart the head from scratch."""
    return {k: v for k, v in loss.state_dict().items() if not k.startswith("model.")}


def _load_loss_state(loss: Any, checkpoint: Path) -> None:
    if not _loss_state(loss):
        return
    path = checkpoint / LOSS_STATE
    if not path.exists():
        logging.getLogger(__name__).warning(
            "%s lacks %s (the loss's own weights): they restart from scratch", checkpoint, LOSS_STATE
        )
        return
    import torch

    loss.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)


class _LossStateSaver:
    """A TrainerCallback that writes the loss's own parameters into each checkpoint the trainer saves."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        state_dict = _loss_state(self.loss)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state_dict and folder.is_dir():
            import torch

            tmp = folder / f".{LOSS_STATE}.tmp"
            torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp)
            os.replace(tmp, folder / LOSS_STATE)


def _last_checkpoint(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    complete = [p for p in found if (p / "trainer_state.json").exists()]
    return max(complete, key=_checkpoint_step) if complete else None


def _checkpoint_step(path: Path | None) -> int:
    return int(path.name.split("-")[-1]) if path is not None else 0


def _save_atomically(
    model: Any, out: Path, config: FinetuneConfig, result: FinetuneResult, dev: PairData | None
) -> None:
    """Save into a temp directory beside out, then swap it in with renames; never a half-written out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save(str(tmp), create_model_card=False)
        (tmp / "README.md").write_text(model_card(config, result, dev), encoding="utf-8")
        summary = {k: v for k, v in result.to_dict().items() if k != "log_history"}
        summary["config"] = {k: (asdict(v) if k in ("columns", "dev_columns") else v) for k, v in vars(config).items()}
        (tmp / "bmsearch_finetune.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        fsync_tree(tmp)
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)  # put the previous model back rather than leave none
            raise
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)  # --out named a file, replaced with --overwrite


def model_card(config: FinetuneConfig, result: FinetuneResult, dev: PairData | None) -> str:
    """A README.md stating base, data, loss, steps and scores, with the hub's metadata header."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}"

    def fmt_loss(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    dev_split = f", split {dev.split}" if dev and dev.split else ""
    dev_line = f"{dev.source} ({dev.format}{dev_split}, {len(dev)} pairs)" if dev else "none"
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, sentence-similarity, feature-extraction, bmsearch]",
        *([f"base_model: {config.base}"] if "/" in config.base and not Path(config.base).exists() else []),
        "---",
        "",
        f"# {Path(result.out).name}",
        "",
        f"Sentence embedding model fine-tuned from `{config.base}` with `bmsearch finetune`;",
        "mean pooling over token embeddings, cosine similarity. Load it with",
        f"`SentenceTransformer({result.out!r})`.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{config.base}` |",
        f"| training data | `{result.train_source}` ({result.train_format}"
        + (f", split {result.train_split}" if result.train_split else "")
        + ") |",
        f"| training examples | {result.train_examples} |",
        f"| loss | {LOSS_NAMES[config.loss]} (`--loss {config.loss}`) |",
        f"| steps | {result.steps} (epochs {result.epochs:.2f}, batch size {config.batch_size}) |",
        f"| learning rate | {config.lr:g}, warmup ratio {config.warmup_ratio:g}, seed {config.seed} |",
        f"| max sequence length | {config.max_seq_length or 'model default'} |",
        f"| device / precision | {result.device} / {result.precision} |",
        f"| training time | {result.seconds:.0f} s ({result.examples_per_s:.1f} examples/s) |",
        f"| training loss | {fmt_loss(result.train_loss_start)} at start, {fmt_loss(result.train_loss_end)} at end |",
        f"| dev set | {dev_line} |",
        f"| dev Spearman (cosine, x100) | {fmt(result.dev_before)} before, {fmt(result.dev_after)} after |",
        "",
    ]
    if result.resumed_from:
        lines.insert(-1, f"Resumed from {result.resumed_from}.")
    return "\n".join(lines)
