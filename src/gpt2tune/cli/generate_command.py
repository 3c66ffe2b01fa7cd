"""``gpt2tune generate``: continue a prompt (primed or not), or reply in a chat (``--chat``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gpt2tune.cli.common import (
    AUTO_PRECISION_HELP,
    LoadOptions,
)
from gpt2tune.cli.options import Append, add_dataclass_args, collect
from gpt2tune.errors import UserError
from gpt2tune.runtime import autocast_dtype, resolve_device


@dataclass
class GenerateOptions:
    """What to continue, and how to print the samples."""

    prompt: str | None = None
    """Text to continue."""
    prime: str | None = None
    """Text placed before the prompt (priming)."""
    prime_file: str | None = None
    """File whose text is placed before the prompt."""
    num_samples: int = 1
    """Samples to generate from the prompt."""
    json: bool = False
    """Print one JSON object per sample per line: text, token_ids."""
    stream: bool | None = None
    """Print tokens as they come (default: when printing one sample to a terminal)."""
    chat: bool = False
    """Reply in a conversation rendered by the chat template the server and training use; the
    reply only is printed."""
    system: str | None = None
    """With --chat: the system text."""
    user: list[str] = field(default_factory=list)
    """With --chat: a user turn (repeatable; turns alternate user, assistant, user, ...)."""
    assistant: list[str] = field(default_factory=list)
    """With --chat: an earlier assistant turn (repeatable)."""
    messages: str | None = None
    """With --chat: a .json file of [{role, content}, ...], instead of --system, --user and
    --assistant."""


def _chat_messages(opts: GenerateOptions) -> list:
    """``generate --chat``: the conversation of the options (each a ``data.chat.Message``)."""
    from gpt2tune.data.chat import ROLES, Message
    from gpt2tune.data.sources import read_text

    if opts.messages:
        try:
            turns = json.loads(read_text(Path(opts.messages)))
        except json.JSONDecodeError as e:
            raise UserError(f"--messages {opts.messages} is not valid JSON ({e.msg})") from None
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and t.get("role") in ROLES and isinstance(t.get("content"), str)
            for t in turns
        ):
            raise UserError(
                f"--messages {opts.messages}: expected a list of {{role, content}} with roles "
                f"{', '.join(ROLES)}"
            )
        messages = [Message(t["role"], t["content"]) for t in turns]
    else:
        if len(opts.user) != len(opts.assistant) + 1:
            raise UserError(
                "--chat takes turns that alternate --user, --assistant, ..., ending with --user: "
                f"got {len(opts.user)} --user and {len(opts.assistant)} --assistant"
            )
        messages = [Message("system", opts.system)] if opts.system else []
        for i, text in enumerate(opts.user):
            messages.append(Message("user", text))
            if i < len(opts.assistant):
                messages.append(Message("assistant", opts.assistant[i]))
    if not messages or messages[-1].role != "user":
        raise UserError("--chat needs the user's turn last, for the model to reply to")
    return messages


def generate_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.inference.generate import SamplingConfig

    # decoding defaults to bf16 where the machine runs it natively (auto): 2-3x the tokens/s
    # of fp32 measured on CPUs with AVX-512 BF16 or AMX (benchmarks/README.md); eval keeps fp32
    add_dataclass_args(
        p,
        LoadOptions,
        "load",
        overrides={"precision": {"default": "auto", "help": AUTO_PRECISION_HELP}},
    )
    repeat = {"action": Append, "nargs": None}
    add_dataclass_args(
        p, GenerateOptions, "generate", overrides={"user": repeat, "assistant": repeat}
    )
    # stop_at_eot has never been a flag: a sample always ends at <|endoftext|>
    add_dataclass_args(
        p,
        SamplingConfig,
        "sampling",
        skip=("stop_at_eot",),
        overrides={
            "stop": {
                "action": Append,
                "nargs": None,
                "help": "String that ends a sample; the text is cut before it (repeatable).",
            }
        },
    )
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from gpt2tune.core.model import cast_for_inference
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.formats.peft import (
        is_dora_adapter,
        load_model_with_adapter,
        load_model_with_adapters,
    )
    from gpt2tune.inference.generate import SamplingConfig, generate

    opts = collect(args, "generate", GenerateOptions)
    sampling = collect(args, "sampling", SamplingConfig)
    chat = None
    if opts.chat:
        from gpt2tune.data.chat import STOP

        if opts.prompt is not None:
            raise UserError("--chat replies to --user (or --messages); leave out --prompt")
        chat = _chat_messages(opts)
        sampling.stop = [*sampling.stop, STOP]  # as the server cuts a reply
    prime = opts.prime
    if opts.prime_file:
        from gpt2tune.data.sources import read_text

        prime = read_text(Path(opts.prime_file))
    if opts.prompt is None and not prime and chat is None:
        raise UserError("nothing to condition on: give --prompt TEXT (and/or --prime/--prime-file)")
    load = collect(args, "load", LoadOptions)
    device = resolve_device(load.device)
    # the adapter stays unmerged, as `gpt2tune serve` runs it: both give the same tokens
    # (a DoRA adapter, which cannot be mixed per row, runs as the model's own layers)
    dora = bool(load.adapter) and is_dora_adapter(load.adapter)
    adapters = {"adapter": load.adapter} if load.adapter and not dora else {}
    model = (
        load_model_with_adapter(load.model, load.adapter, device=device)
        if dora
        else load_model_with_adapters(load.model, adapters, device=device)
    )
    amp = autocast_dtype(load.precision, device)
    if amp is not None:
        cast_for_inference(model, amp)  # once, not at every step
    tok = Tokenizer(model.source_dir)
    stream = opts.stream
    if stream is None:
        stream = not opts.json and opts.num_samples == 1 and sys.stdout.isatty()
    on_text = None
    if stream and not opts.chat:
        print(opts.prompt or "", end="", flush=True)

        def on_text(_row: int, text: str) -> None:
            print(text, end="", flush=True)

    prompt: str | list[int] = opts.prompt or ""
    if chat is not None:
        from gpt2tune.data.chat import prompt_ids

        prompt = prompt_ids(chat, tok)  # every earlier reply closed by <|endoftext|>, as trained
    samples = generate(
        model,
        tok,
        prompt,
        sampling,
        prime=prime,
        num_samples=opts.num_samples,
        adapter="adapter" if adapters else None,
        autocast_dtype=amp,
        on_text=on_text,
    )
    if stream:
        print()
        return 0
    for i, s in enumerate(samples):
        if opts.json:
            print(json.dumps({"sample": i, "text": s.text, "token_ids": s.token_ids}))
        else:
            if opts.num_samples > 1:
                print(f"=== sample {i + 1} ===")
            print(s.text.strip() if opts.chat else (opts.prompt or "") + s.text)
    return 0
