"""Shared fixtures: a micro Llama, a tiny trained ByteLevel BPE tokenizer, a few forget examples.

Everything is seeded and small enough that a full training run takes well under a second on CPU.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from prod_unlearn.data.examples import Example

CODE = [
    "def add(a, b):\n    return a + b\n",
    "def mul(a, b):\n    return a * b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nimport sys\n\nprint(os.path.join(sys.prefix, 'lib'))\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "with open('data.txt') as f:\n    lines = [line.strip() for line in f]\n",
    "x = {'key': [1, 2, 3], 'other': (4, 5)}\nassert x['key'][0] == 1\n",
]

FORGET = [
    Example("# add two numbers\n", "def add(a, b):\n    return a + b\n", "add"),
    Example("", "class Stack:\n    def __init__(self):\n        self.items = []\n", "stack"),
    Example("# loop\n", "for i in range(10):\n    print(i * i)\n", "loop"),
    Example("", "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n", "fib"),
    Example("# files\n", "with open('data.txt') as f:\n    lines = [line.strip() for line in f]\n", "files"),
]

REPO = Path(__file__).resolve().parent.parent

# One intra-op thread: the micro model is far too small to gain from more, and on a shared
# 2-core machine a second spinning thread makes every step ~50x slower. Also keeps float
# reductions in one fixed order.
torch.set_num_threads(1)


def make_tokenizer():
    """A ByteLevel BPE trained on CODE (vocabulary ~300), bos/eos <|endoftext|>, pad <|pad|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CODE, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def make_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # Larger-than-default init so the micro model has a peaked (non-uniform) output distribution.
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    return model.float().eval()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PROD_UNLEARN_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("PROD_UNLEARN_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory, tokenizer):
    """The seeded micro model + tokenizer saved as a Hugging Face folder (for subprocess tests)."""
    d = tmp_path_factory.mktemp("micro")
    make_model(tokenizer).save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def memorised_dir(tmp_path_factory, tokenizer):
    """The micro model after plain fine-tuning on FORGET until it reproduces it (the paper's setup)."""
    from prod_unlearn.data.batching import collate, encode
    model = make_model(tokenizer).train()
    b = collate(encode(FORGET, tokenizer, 64), tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for _ in range(30):
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    d = tmp_path_factory.mktemp("memorised")
    model.eval().save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def memorised_model(memorised_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(memorised_dir, dtype=torch.float32).eval()


@pytest.fixture
def micro_model(micro_dir):
    """A fresh copy of the micro model (tests may train it)."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(micro_dir, dtype=torch.float32).eval()


@pytest.fixture
def forget_examples():
    return list(FORGET)


@pytest.fixture
def subprocess_env(tmp_path):
    """Environment for child processes: same interpreter, no GPU, no progress bars, private cache."""
    env = dict(os.environ)
    env.update({"PROD_UNLEARN_NO_PROGRESS": "1", "PROD_UNLEARN_CACHE": str(tmp_path / "child-cache"),
                "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"})
    return env


PYTHON = sys.executable
