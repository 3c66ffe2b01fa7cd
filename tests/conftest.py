"""Shared fixtures: tiny random GPT-2 checkpoints built by transformers itself (the reference)."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest
import torch
from checkpoints import make_hf_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# An empty Hugging Face cache of the tests' own, so `--base auto` behaves alike on every machine
# (a developer's cached GPT-2 would otherwise turn the quick demo into a 124M-parameter run).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="gpt2tune-tests-hf-")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
logging.getLogger("transformers").setLevel(logging.ERROR)
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(directory, transformers model) of a tiny GPT-2 with the full 50,257-token vocabulary."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    return path, make_hf_model(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(directory, transformers model) of a 2-layer, 48-wide GPT-2 with a 1,000-token vocabulary
    (the LoRA and adapter tests)."""
    path = tmp_path_factory.mktemp("tiny-lora")
    return path, make_hf_model(path, vocab_size=1000, bos_token_id=999, eos_token_id=999)


@pytest.fixture
def tokens():
    """(2, 12) random ids below 1,000, for ``tiny``."""
    return torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
