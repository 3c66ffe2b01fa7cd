"""Command-line interface: argument parsing only; each subcommand calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpt2tune.errors import UserError


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def _autocast_dtype(precision: str, device):
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    # auto: bf16 where the hardware runs it natively
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    from gpt2tune.hardware import cpu_has_bf16

    return torch.bfloat16 if cpu_has_bf16() else None


def _load(args):
    from gpt2tune.checkpoint import load_model
    from gpt2tune.tokenizer import Tokenizer

    device = _device(args.device)
    model = load_model(args.model, device=device)
    adapter = getattr(args, "adapter", None)
    if adapter:
        from gpt2tune.checkpoint import load_adapter

        load_adapter(model, adapter)
    return model, Tokenizer(model.source_dir), device


def cmd_generate(args) -> int:
    from gpt2tune.generate import SamplingConfig, generate

    prime = args.prime
    if args.prime_file:
        from gpt2tune.data import _read_text

        prime = _read_text(Path(args.prime_file))
    if args.prompt is None and not prime:
        raise UserError("nothing to condition on: give --prompt TEXT (and/or --prime/--prime-file)")
    model, tok, device = _load(args)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         repetition_penalty=args.repetition_penalty, stop=args.stop or [],
                         seed=args.seed)
    stream = args.stream or (not args.json and args.num_samples == 1 and sys.stdout.isatty())
    on_text = None
    if stream:
        print(args.prompt or "", end="", flush=True)

        def on_text(_row: int, text: str) -> None:
            print(text, end="", flush=True)

    samples = generate(model, tok, args.prompt or "", cfg, prime=prime,
                       num_samples=args.num_samples,
                       autocast_dtype=_autocast_dtype(args.precision, device), on_text=on_text)
    if stream:
        print()
        return 0
    for i, s in enumerate(samples):
        if args.json:
            print(json.dumps({"sample": i, "text": s.text, "token_ids": s.token_ids}))
        else:
            if args.num_samples > 1:
                print(f"=== sample {i + 1} ===")
            print((args.prompt or "") + s.text)
    return 0


def cmd_eval(args) -> int:
    from gpt2tune.data import read_documents
    from gpt2tune.evaluate import evaluate

    texts = read_documents(args.data, args.doc_sep)
    model, tok, device = _load(args)
    docs = [ids + [tok.eot_id] for ids in tok.encode_batch(texts)]
    n_ctx = model.config.n_positions
    if args.stride is not None and not 0 < args.stride <= n_ctx:
        raise UserError(f"--stride must be between 1 and the context ({n_ctx}), got {args.stride}")
    res = evaluate(model, docs, stride=args.stride, batch_size=args.batch_size,
                   autocast_dtype=_autocast_dtype(args.precision, device))
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"documents: {len(docs)}  tokens scored: {res.tokens:,}")
        print(f"loss: {res.loss:.4f}  perplexity: {res.perplexity:.3f}")
    return 0


def cmd_info(args) -> int:
    from gpt2tune.checkpoint import describe_model

    info = describe_model(args.model)
    if args.json:
        print(json.dumps(info))
        return 0
    for k, v in info.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk}: {vv}")
        else:
            print(f"{k}: {f'{v:,}' if isinstance(v, int) else v}")
    return 0


def _common_model_args(p: argparse.ArgumentParser, adapter: bool = True) -> None:
    p.add_argument("--model", required=True,
                   help="HF-format GPT-2 directory, or a hub id such as gpt2 (when online)")
    if adapter:
        p.add_argument("--adapter", help="LoRA adapter directory (peft format) to apply")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                   help="matmul precision via autocast (default: fp32)")


def build_parser() -> argparse.ArgumentParser:
    from gpt2tune import __version__

    parser = argparse.ArgumentParser(prog="gpt2tune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpt2tune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text, optionally primed with example text")
    _common_model_args(g)
    g.add_argument("--prompt", help="text to continue")
    g.add_argument("--prime", help="text placed before the prompt (priming)")
    g.add_argument("--prime-file", help="file whose text is placed before the prompt")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--greedy", action="store_true", help="argmax decoding")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object per sample per line: text, token_ids")
    g.add_argument("--stream", action="store_true",
                   help="stream tokens as they come (default when printing one sample to a terminal)")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="loss and perplexity over a text file")
    _common_model_args(e)
    e.add_argument("--data", required=True, help="text file (documents separated by blank lines)")
    e.add_argument("--doc-sep", default="blank", choices=["blank", "line"],
                   help="documents are separated by blank lines (default) or one per line")
    e.add_argument("--stride", type=int, default=None,
                   help="sliding-window step for documents longer than the context "
                        "(default: half the context)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--json", action="store_true", help="print {loss, perplexity, tokens}")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="config, parameter count, dtype and size of a model")
    i.add_argument("--model", required=True, help="HF-format GPT-2 directory or hub id")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (callable from tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"gpt2tune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt2tune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
