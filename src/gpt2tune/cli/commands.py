"""The commands: for each, the options (typed dataclasses) and what it runs (library calls).

Each command is a pair of functions: ``X_options`` gives the command's parser its options, from
dataclasses only, and names ``cmd_X`` as what to run; ``cmd_X`` rebuilds the dataclasses from the
parsed options (``collect``), calls the library and prints the outcome. Option dataclasses that
belong to the CLI alone (what to print, where to write) are defined here; the others are the
library's own (``SamplingConfig``, ``TrainConfig``, ``LoRAConfig``, ...), imported only when their
command is chosen.
"""

from gpt2tune.cli.common import Precision
from gpt2tune.cli.export_command import export_options
from gpt2tune.cli.generate_command import generate_options
from gpt2tune.cli.model_commands import (
    classify_options,
    eval_options,
    info_options,
    merge_options,
    serve_options,
)
from gpt2tune.cli.qa_commands import answer_options
from gpt2tune.cli.study_commands import compare_options, demo_options
from gpt2tune.cli.train_commands import data_options, pretrain_options, train_options

__all__ = ["COMMANDS", "Precision"]

COMMANDS = [
    ("generate", "generate text, optionally primed with example text", None, generate_options),
    ("eval", "loss and perplexity over a text file", None, eval_options),
    ("info", "config, parameter count, dtype and size of a model or preset", None, info_options),
    (
        "classify",
        "label texts with a classifier (a GPT2ForSequenceClassification model, or a "
        "base plus a classification adapter)",
        None,
        classify_options,
    ),
    (
        "answer",
        "answer questions from a context with a question-answering model (a "
        "GPT2ForQuestionAnswering model, or a base plus a QA adapter)",
        None,
        answer_options,
    ),
    (
        "train",
        "fine-tune with LoRA or fully (or train from scratch)",
        "Fine-tune GPT-2 with LoRA or fully; every option can also be set in a --config FILE.toml "
        "(keys are option names).",
        train_options,
    ),
    ("merge", "merge a LoRA adapter into its base, saved as an HF model", None, merge_options),
    (
        "export",
        "a model, its LoRA adapter or both merged as GGUF for llama.cpp, or an Ollama folder",
        "Writes llama.cpp's GGUF: the model (--dtype f32|f16|bf16|q8_0), a LoRA adapter "
        "(--adapter) as a GGUF LoRA adapter, or the two merged (--merge); --format ollama writes "
        "a folder with a Modelfile that uses gpt2tune's chat template.",
        export_options,
    ),
    ("data", "list and inspect the built-in datasets", None, data_options),
    (
        "pretrain",
        "pretrain the demo's small base GPT-2 from scratch on builtin:wiki",
        None,
        pretrain_options,
    ),
    (
        "demo",
        "rerun the seed project's experiments and write a report",
        "News style, a Shakespeare character's voice and the character answering cues: base "
        "model, priming, LoRA and full fine-tuning, a LoRA rank sweep; writes report.md and "
        "report.html to --out.",
        demo_options,
    ),
    (
        "compare",
        "compare base, priming, LoRA and full fine-tuning on your own text",
        "The demo's question asked of your text: held-out perplexity, samples, a style score, "
        "cost; writes report.md, report.html and results.json to --out (--plan: print the runs "
        "and exit).",
        compare_options,
    ),
    (
        "serve",
        "serve the base, its adapters and variants over an OpenAI-compatible HTTP API",
        "An OpenAI-compatible server (completions, chat, models) for the base model, any number of "
        "LoRA adapters over one copy of its weights (--adapter NAME=DIR, chosen per request by "
        "'model') and full fine-tuned variants (--variant NAME=DIR), with continuous batching and "
        "a browser playground at /.",
        serve_options,
    ),
]
