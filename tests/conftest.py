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
# One intra-op thread count for the whole session (two at most: the tiny models gain nothing from
# more; under pytest-xdist each worker its share of the cores, so that together they use no more
# threads than there are cores). Runs that a test compares bit for bit must use the same count: on
# some CPUs (a Xeon with AMX, whose oneDNN fp32 kernels split the work by thread) another count
# gives other bits. Subprocesses get it from ``same_threads_env``; a test that changes it gets it
# back (``_threads``).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, torch.get_num_threads() // WORKERS))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _threads():
    """Give the session's thread count back after a test that changed it, so that later exact
    comparisons still compare runs made alike."""
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


@pytest.fixture
def same_threads_env():
    """``os.environ`` for a subprocess whose results are compared bit for bit with this process's:
    the same thread count (MKL_NUM_THREADS as well, since torch takes it over OMP_NUM_THREADS)."""
    n = str(torch.get_num_threads())
    return dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(directory, transformers model) of a tiny GPT-2 with the full 50,257-token vocabulary."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    return path, make_hf_model(path)


@pytest.fixture(scope="session")
def nodrop(tmp_path_factory):
    """(directory, transformers model) of ``tiny_hf``'s shape without dropout, so a training
    step's loss is the model's loss (the first-step tests)."""
    path = tmp_path_factory.mktemp("nodrop")
    return path, make_hf_model(path, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.fixture(scope="session")
def hf_tokenizers(tmp_path_factory):
    """transformers' (slow, fast) GPT-2 tokenizers built from the vocabulary files gpt2tune
    bundles: the reference for token counts."""
    import shutil

    from transformers import GPT2Tokenizer, GPT2TokenizerFast

    from gpt2tune.core.tokenizer import bundled_vocab_files

    d = tmp_path_factory.mktemp("tok")
    vocab, merges = bundled_vocab_files()
    shutil.copyfile(vocab, d / "vocab.json")
    shutil.copyfile(merges, d / "merges.txt")
    return GPT2Tokenizer.from_pretrained(d), GPT2TokenizerFast.from_pretrained(d)


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
