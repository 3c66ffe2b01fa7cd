"""Command-line interface: argument parsing only; each subcommand calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gpt2tune.errors import UserError
from gpt2tune.runtime import autocast_dtype, resolve_device

# ----------------------------------------------------------------------------- dataclass options

def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (the one source of help text)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def add_dataclass_args(parser, cls, group: str, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One option per field of dataclass ``cls``: ``--{prefix}{field-name}``, typed from the
    annotation, help from the field's docstring; dest ``{group}__{field}``."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw: dict = {"dest": f"{group}__{f.name}", "default": default, "metavar": f.name.upper(),
                    "help": (docs.get(f.name, "") + (f" (default: {default})" if default not in (None, [], "") else "")).replace("%", "%%")}
        args = typing.get_args(tp)
        if isinstance(tp, types.UnionType):  # X | None
            tp = next(a for a in args if a is not type(None))
            args = typing.get_args(tp)
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
            del kw["metavar"]
        elif origin is list:
            kw.update(nargs="+", type=args[0])
        elif origin is tuple:
            kw.update(nargs=len(args), type=args[0])
        else:
            kw["type"] = tp
        parser.add_argument(flag, **kw)


def collect(args, group: str, cls):
    """Rebuild dataclass ``cls`` from the parsed options of ``group``."""
    import dataclasses

    values = {f.name: getattr(args, f"{group}__{f.name}") for f in dataclasses.fields(cls)
              if hasattr(args, f"{group}__{f.name}")}
    for k, v in values.items():
        if isinstance(v, tuple):
            values[k] = v
        elif isinstance(v, list) and k == "betas":
            values[k] = tuple(v)
    return cls(**values)


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """Defaults from a TOML file whose keys are option names (``lr``, ``lora-r``, ``batch_size``)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise UserError(f"cannot read --config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config {path} is not valid TOML: {e}") from None
    by_flag = {opt.lstrip("-"): a.dest for a in parser._actions for opt in a.option_strings}
    flat: dict = {}
    for key, value in table.items():
        if isinstance(value, dict):  # [lora] r = 4  ->  lora-r
            flat.update({f"{key}-{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    defaults = {}
    for key, value in flat.items():
        name = key.replace("_", "-")
        if name not in by_flag or name in ("config", "help"):
            raise UserError(f"--config {path}: unknown option {key!r}; use the names of "
                            f"`gpt2tune {parser.prog.split()[-1]} --help` without the dashes")
        defaults[by_flag[name]] = value
    parser.set_defaults(**defaults)


def _load(args):
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.formats.hf import load_model

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    adapter = getattr(args, "adapter", None)
    if adapter:
        from gpt2tune.formats.peft import load_adapter

        load_adapter(model, adapter)
    return model, Tokenizer(model.source_dir), device


def cmd_generate(args) -> int:
    from gpt2tune.inference.generate import SamplingConfig, generate

    prime = args.prime
    if args.prime_file:
        from gpt2tune.data.sources import read_text

        prime = read_text(Path(args.prime_file))
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
                       autocast_dtype=autocast_dtype(args.precision, device), on_text=on_text)
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
    from gpt2tune.data.sources import read_documents
    from gpt2tune.inference.evaluate import evaluate

    texts = read_documents(args.data, args.doc_sep)
    model, tok, device = _load(args)
    docs = [ids + [tok.eot_id] for ids in tok.encode_batch(texts)]
    n_ctx = model.config.n_positions
    if args.stride is not None and not 0 < args.stride <= n_ctx:
        raise UserError(f"--stride must be between 1 and the context ({n_ctx}), got {args.stride}")
    res = evaluate(model, docs, stride=args.stride, batch_size=args.batch_size,
                   autocast_dtype=autocast_dtype(args.precision, device))
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"documents: {len(docs)}  tokens scored: {res.tokens:,}")
        print(f"loss: {res.loss:.4f}  perplexity: {res.perplexity:.3f}")
    return 0


def cmd_info(args) -> int:
    if args.preset:
        from gpt2tune.core.lora import (
            LoRAConfig,
            format_parameter_report,
            lora_parameter_count,
        )
        from gpt2tune.core.model import GPT2Config

        try:
            config = GPT2Config.from_preset(args.preset)
        except ValueError as e:
            raise UserError(str(e)) from None
        info = {"preset": args.preset, "config": config.to_dict(), "parameters": config.num_params()}
        if args.lora_r:
            lora = LoRAConfig(r=args.lora_r, targets=args.lora_targets)
            trainable = lora_parameter_count(config, lora)
            total = config.num_params() + trainable
            info.update(lora_trainable=trainable, report=format_parameter_report(trainable, total))
    elif args.model:
        from gpt2tune.formats.hf import describe_model

        info = describe_model(args.model)
    else:
        raise UserError("give --model DIR (a saved model) or --preset NAME (an architecture)")
    if args.json:
        print(json.dumps(info))
        return 0
    for k, v in info.items():
        if k == "report":
            print(v)
        elif isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk}: {vv}")
        else:
            print(f"{k}: {f'{v:,}' if isinstance(v, int) else v}")
    return 0


def cmd_train(args) -> int:
    from gpt2tune.core.lora import LoRAConfig
    from gpt2tune.finetune.config import TrainConfig
    from gpt2tune.finetune.recipe import (
        DataOptions,
        ModelOptions,
        RunOptions,
        fine_tune,
    )

    _log_to_stderr()
    opts = RunOptions(out=args.run__out, resume=args.run__resume, overwrite=args.run__overwrite,
                      model=collect(args, "model", ModelOptions), data=collect(args, "data", DataOptions),
                      lora=collect(args, "lora", LoRAConfig), train=collect(args, "train", TrainConfig))
    if args.train__progress is None:
        opts.train.progress = sys.stderr.isatty()
    res = fine_tune(opts)
    if res.interrupted:
        print(f"interrupted at step {res.steps}; checkpoint saved: continue with the same command "
              "plus --resume", file=sys.stderr)
        return 130
    what = "adapter" if opts.train.method == "lora" else "model"
    val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
    print(f"done: {res.steps} steps, {res.tokens_seen:,} tokens in {res.wall_s:.1f}s, "
          f"final loss {res.final_loss:.4f}{val}; {what} saved to {opts.out}")
    return 0


def cmd_merge(args) -> int:
    from gpt2tune.core.lora import merge_and_unload
    from gpt2tune.formats.hf import load_model, save_model
    from gpt2tune.formats.peft import load_adapter

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to replace it")
    model = load_model(args.model)
    load_adapter(model, args.adapter)
    merged = merge_and_unload(model)
    merged.source_dir = model.source_dir
    save_model(merged, out)
    print(f"merged model saved to {out}")
    return 0


def cmd_data(args) -> int:
    from gpt2tune.data.builtin import describe_builtin, list_builtins

    if args.data_command == "list":
        for b in list_builtins():
            print(f"{b['name']:<28} {b['description']}")
        return 0
    from gpt2tune.core.tokenizer import Tokenizer

    tok = Tokenizer()
    info = describe_builtin(args.name, count_tokens=lambda t: len(tok.encode(t)))
    if args.json:
        print(json.dumps(info))
        return 0
    for k, v in info.items():
        print(f"{k}: {v}" if k != "sample" else f"sample:\n{v}")
    return 0


def cmd_pretrain(args) -> int:
    from gpt2tune.experiments.runner import PretrainConfig, pretrain

    _log_to_stderr()
    cfg = collect(args, "pretrain", PretrainConfig)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    info = pretrain(args.out, cfg, overwrite=args.overwrite, progress=progress)
    print(f"done: {info.parameters:,} parameters, {info.steps} steps, {info.tokens_seen:,} tokens "
          f"in {info.train_wall_s:.1f}s; held-out wiki loss {info.val_loss:.4f}; model saved to "
          f"{args.out}")
    return 0


def cmd_demo(args) -> int:
    from gpt2tune.experiments.runner import DemoOptions, run_demo

    _log_to_stderr()
    opts = collect(args, "demo", DemoOptions)
    opts.progress = sys.stderr.isatty() if args.progress is None else args.progress
    res = run_demo(opts)
    print(f"demo finished in {res.wall_s:.0f}s; report: {res.report_html} (and {res.report_md.name})")
    return 0


class _StderrHandler(logging.Handler):
    """Writes log messages to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _log_to_stderr() -> None:
    logger = logging.getLogger("gpt2tune")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _common_model_args(p: argparse.ArgumentParser, adapter: bool = True) -> None:
    p.add_argument("--model", required=True,
                   help="HF-format GPT-2 directory, or a hub id such as gpt2 (when online)")
    if adapter:
        p.add_argument("--adapter", help="LoRA adapter directory (peft format) to apply")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                   help="matmul precision via autocast (default: fp32)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from gpt2tune import __version__
    from gpt2tune.core.lora import TARGETS, LoRAConfig
    from gpt2tune.experiments.runner import DemoOptions, PretrainConfig
    from gpt2tune.finetune.config import TrainConfig
    from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions

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
    e.add_argument("--data", required=True,
                   help="text file (documents separated by blank lines), .jsonl/.json/.csv, a "
                        "directory of .txt files, or builtin:NAME (its test split)")
    e.add_argument("--doc-sep", default="blank", choices=["blank", "line"],
                   help="documents are separated by blank lines (default) or one per line")
    e.add_argument("--text-field", default="text", help="JSON field / CSV column with the text")
    e.add_argument("--stride", type=int, default=None,
                   help="sliding-window step for documents longer than the context "
                        "(default: half the context)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--json", action="store_true", help="print {loss, perplexity, tokens}")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="config, parameter count, dtype and size of a model or preset")
    i.add_argument("--model", help="HF-format GPT-2 directory or hub id")
    i.add_argument("--preset", help="an architecture preset instead of a model (nothing allocated)")
    i.add_argument("--lora-r", type=int, default=0, help="with --preset: report LoRA parameters")
    i.add_argument("--lora-targets", nargs="+", default=["c_attn"], choices=list(TARGETS))
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="fine-tune with LoRA or fully (or train from scratch)",
                       description="Fine-tune GPT-2 with LoRA or fully; every option can also be "
                                   "set in a --config FILE.toml (keys are option names).")
    t.add_argument("--config", help="TOML file of options (command-line options win)")
    add_dataclass_args(t, RunOptions, "run", skip=("model", "data", "lora", "train"))
    add_dataclass_args(t, ModelOptions, "model")
    add_dataclass_args(t, DataOptions, "data")
    add_dataclass_args(t, TrainConfig, "train")
    add_dataclass_args(t, LoRAConfig, "lora", prefix="lora-")
    t.set_defaults(func=cmd_train, train__progress=None)

    m = sub.add_parser("merge", help="merge a LoRA adapter into its base, saved as an HF model")
    m.add_argument("--model", required=True, help="the base model")
    m.add_argument("--adapter", required=True, help="peft-format LoRA adapter directory")
    m.add_argument("--out", required=True, help="directory for the merged model")
    m.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    m.set_defaults(func=cmd_merge)

    d = sub.add_parser("data", help="list and inspect the built-in datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="the builtin: names")
    show = dsub.add_parser("show", help="documents, tokens and a sample of one built-in dataset")
    show.add_argument("name", help="e.g. builtin:news or builtin:shakespeare:FALSTAFF")
    show.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data)

    pre = sub.add_parser("pretrain", help="pretrain the demo's small base GPT-2 from scratch on "
                                          "builtin:wiki")
    pre.add_argument("--out", required=True, help="directory for the model and training logs")
    pre.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    pre.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: when stderr is a terminal)")
    add_dataclass_args(pre, PretrainConfig, "pretrain")
    pre.set_defaults(func=cmd_pretrain)

    demo = sub.add_parser("demo", help="rerun the seed project's experiments and write a report",
                          description="News style and a Shakespeare character's voice: base model, "
                                      "priming, LoRA and full fine-tuning, a LoRA rank sweep; "
                                      "writes report.md and report.html to --out.")
    add_dataclass_args(demo, DemoOptions, "demo", skip=("progress",))
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bars on stderr (default: when stderr is a terminal)")
    demo.set_defaults(func=cmd_demo)
    return parser, {"train": t}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (callable from tests)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subparsers = build_parser()
    try:
        if argv and argv[0] in subparsers and "--config" in argv[1:]:
            k = argv.index("--config")
            if k + 1 >= len(argv):
                raise UserError("--config needs a file name")
            apply_config_file(subparsers[argv[0]], argv[k + 1])
        args = parser.parse_args(argv)
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
