"""gpt2tune: fine-tune GPT-2 fully or with LoRA, generate with priming, and compare honestly.

The public API, importable from here (loaded on first use, so ``import gpt2tune`` and
``gpt2tune --version`` do not import torch)::

    from gpt2tune import load_model, load_adapter, Tokenizer, SamplingConfig, generate
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "GPT2": "gpt2tune.core.model",
    "GPT2Config": "gpt2tune.core.model",
    "KVCache": "gpt2tune.core.model",
    "GPT2Classifier": "gpt2tune.core.classifier",
    "load_classifier": "gpt2tune.formats.hf",
    "GPT2QuestionAnswering": "gpt2tune.core.qa",
    "load_qa_model": "gpt2tune.formats.hf",
    "load_qa_model_with_adapter": "gpt2tune.formats.peft",
    "QAExample": "gpt2tune.data.qa",
    "read_qa": "gpt2tune.data.qa",
    "answer_questions": "gpt2tune.inference.qa",
    "score_answers": "gpt2tune.inference.qa",
    "LoRAConfig": "gpt2tune.core.lora",
    "apply_lora": "gpt2tune.core.lora",
    "merge_and_unload": "gpt2tune.core.lora",
    "count_parameters": "gpt2tune.core.lora",
    "Tokenizer": "gpt2tune.core.tokenizer",
    "load_model": "gpt2tune.formats.hf",
    "save_model": "gpt2tune.formats.hf",
    "load_adapter": "gpt2tune.formats.peft",
    "save_adapter": "gpt2tune.formats.peft",
    "load_model_with_adapter": "gpt2tune.formats.peft",
    "load_model_with_adapters": "gpt2tune.formats.peft",
    "install_adapters": "gpt2tune.core.multilora",
    "read_documents": "gpt2tune.data.sources",
    "SamplingConfig": "gpt2tune.inference.sampling",
    "Engine": "gpt2tune.inference.engine",
    "GenerationRequest": "gpt2tune.inference.engine",
    "generate": "gpt2tune.inference.generate",
    "evaluate": "gpt2tune.inference.evaluate",
    "EvalResult": "gpt2tune.inference.evaluate",
    "TrainConfig": "gpt2tune.finetune.config",
    "TrainResult": "gpt2tune.finetune.config",
    "train": "gpt2tune.finetune.recipe",
    "fine_tune": "gpt2tune.finetune.recipe",
    "RunOptions": "gpt2tune.finetune.recipe",
    "ModelOptions": "gpt2tune.finetune.recipe",
    "DataOptions": "gpt2tune.data.options",
    "UserError": "gpt2tune.errors",
}
__all__ = [*_API, "__version__"]

if TYPE_CHECKING:
    # for type checkers and IDEs; `X as X` marks each name as re-exported (PEP 484), which
    # `__all__` cannot say here since it is computed from _API
    from gpt2tune.core.classifier import GPT2Classifier as GPT2Classifier
    from gpt2tune.core.lora import (
        LoRAConfig as LoRAConfig,
        apply_lora as apply_lora,
        count_parameters as count_parameters,
        merge_and_unload as merge_and_unload,
    )
    from gpt2tune.core.model import GPT2 as GPT2, GPT2Config as GPT2Config, KVCache as KVCache
    from gpt2tune.core.multilora import install_adapters as install_adapters
    from gpt2tune.core.qa import GPT2QuestionAnswering as GPT2QuestionAnswering
    from gpt2tune.core.tokenizer import Tokenizer as Tokenizer
    from gpt2tune.data.options import DataOptions as DataOptions
    from gpt2tune.data.qa import QAExample as QAExample, read_qa as read_qa
    from gpt2tune.data.sources import read_documents as read_documents
    from gpt2tune.errors import UserError as UserError
    from gpt2tune.finetune.config import TrainConfig as TrainConfig, TrainResult as TrainResult
    from gpt2tune.finetune.recipe import (
        ModelOptions as ModelOptions,
        RunOptions as RunOptions,
        fine_tune as fine_tune,
        train as train,
    )
    from gpt2tune.formats.hf import (
        load_classifier as load_classifier,
        load_model as load_model,
        load_qa_model as load_qa_model,
        save_model as save_model,
    )
    from gpt2tune.formats.peft import (
        load_adapter as load_adapter,
        load_model_with_adapter as load_model_with_adapter,
        load_model_with_adapters as load_model_with_adapters,
        load_qa_model_with_adapter as load_qa_model_with_adapter,
        save_adapter as save_adapter,
    )
    from gpt2tune.inference.engine import Engine as Engine, GenerationRequest as GenerationRequest
    from gpt2tune.inference.evaluate import EvalResult as EvalResult, evaluate as evaluate
    from gpt2tune.inference.generate import generate as generate
    from gpt2tune.inference.qa import (
        answer_questions as answer_questions,
        score_answers as score_answers,
    )
    from gpt2tune.inference.sampling import SamplingConfig as SamplingConfig


def __getattr__(name: str) -> object:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'gpt2tune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
