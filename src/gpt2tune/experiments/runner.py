"""``gpt2tune demo``: the seed project's experiments, rerun on one footing, written up as a report.

The seed project fine-tuned GPT-2 with LoRA on news articles (it worked) and on one character's
speeches (it did not; its author blamed LoRA's capacity and tried priming). The demo reruns both
and answers the capacity question:

1. **News style**: base vs LoRA (r=4 on ``c_attn``, as the seed) vs full fine-tuning.
2. **Character voice**: base, priming only, LoRA, full, LoRA + priming; held-out perplexity and a
   style score from a classifier (``gpt2tune.experiments.style``).
3. **LoRA capacity**: a rank sweep (and more target modules) against full fine-tuning.

Every training run goes through ``pipeline.fine_tune`` with the options ``gpt2tune train`` would
get, and the report prints those commands, so any single result can be rerun by hand.

Offline, the base model is the *embedded default*: a small GPT-2 pretrained from scratch on
``builtin:wiki`` by ``pretrain`` and cached under ``cache_dir()/base``. ``--base`` takes any GPT-2.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.core.model import GPT2
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import tokenize_documents
from gpt2tune.data.sources import read_documents
from gpt2tune.errors import UserError
from gpt2tune.experiments.style import StyleClassifier, train_style_classifier
from gpt2tune.finetune.config import TrainConfig, TrainResult
from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions, fine_tune
from gpt2tune.inference.evaluate import EvalResult, evaluate, score_windows, windows
from gpt2tune.inference.generate import SamplingConfig, generate
from gpt2tune.runtime import autocast_dtype, cache_dir, resolve_device

log = logging.getLogger("gpt2tune")

BASE_INFO = "base.json"
DEMO_MARKER = "demo.json"
RECIPE_VERSION = 1
"""Bump when ``pretrain`` changes what it builds, so cached bases are rebuilt."""
VAL_TOKENS_PER_DOC = 1024
"""The base's validation loss scores the first this many tokens of each held-out wiki article
(all ten of them), which keeps it to a few seconds."""

NEWS_PROMPT = "The Federal Government says"
CHARACTER_PROMPTS = ("Why,", "I tell thee,", "Now, my lord,", "What,", "Well,", "Nay,")

# ----------------------------------------------------------------------------- configuration

@dataclass
class PretrainConfig:
    """How the embedded default base model is pretrained from scratch on ``builtin:wiki``."""

    preset: str = "gpt2-micro"
    """Architecture (see ``gpt2tune info --preset``)."""
    max_steps: int = 360
    """Optimizer steps (360: about 5 minutes on 2 idle CPU cores)."""
    batch_size: int = 4
    """Rows per step."""
    block_size: int = 256
    """Tokens per row (the whole context, so every position embedding is trained)."""
    lr: float = 6e-3
    """Peak learning rate (cosine decay, 5% warm-up)."""
    precision: str = "fp32"
    """fp32 or bf16 autocast; on CPUs without native bf16 (most), fp32 is much faster."""
    seed: int = 0
    """Seed for initialisation and data order."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""

    def cache_name(self) -> str:
        """Directory name of this base in the cache: every setting that changes the weights."""
        return (f"wiki-{self.preset}-{self.max_steps}x{self.batch_size}x{self.block_size}"
                f"-lr{self.lr:g}-{self.precision}-seed{self.seed}-v{RECIPE_VERSION}")


@dataclass
class DemoPlan:
    """Sizes of everything the demo does; the full demo and ``--quick`` differ only here."""

    pretrain: PretrainConfig
    batch_size: int = 4
    """Rows per step of every fine-tuning run (rows are the model's whole context)."""
    news_epochs: float | None = 1
    news_max_steps: int | None = None
    news_eval_every: int = 18
    char_epochs: float | None = 2
    char_max_steps: int | None = None
    char_eval_every: int = 7
    lr_lora: float = 1e-2
    lr_full: float = 1e-3
    lora_alpha_per_rank: float = 2.0
    """alpha = this * r, so every rank has the same scaling alpha / r."""
    news_rank: int = 4
    char_rank: int = 4
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    wide_rank: int = 8
    wide_targets: tuple[str, ...] = ("all-linear",)
    prime_speeches: int = 3
    """Training speeches placed before the prompt when priming."""
    news_samples: int = 3
    char_prompts: tuple[str, ...] = CHARACTER_PROMPTS
    samples_per_prompt: int = 4
    max_new_tokens: int = 60
    temperature: float = 0.9
    top_k: int = 40


FULL_PLAN = DemoPlan(pretrain=PretrainConfig())
QUICK_PLAN = DemoPlan(
    pretrain=PretrainConfig(preset="gpt2-nano", max_steps=60, batch_size=2, lr=1e-2),
    news_epochs=None, news_max_steps=20, news_eval_every=10,
    char_epochs=None, char_max_steps=6, char_eval_every=3,
    ranks=(1, 4, 16), char_prompts=CHARACTER_PROMPTS[:3], samples_per_prompt=3,
    news_samples=2, max_new_tokens=40)


@dataclass
class DemoOptions:
    """What ``gpt2tune demo`` runs."""

    out: str = "runs/demo"
    """Directory for the report, plots, adapters and models."""
    base: str | None = None
    """Any GPT-2 (HF directory or hub id) as the base; default: the embedded one (built once)."""
    character: str = "FALSTAFF"
    """Shakespeare character of experiments 2 and 3."""
    quick: bool = False
    """Smaller everything (about 3 minutes with its own small base): for CI and a first look."""
    overwrite: bool = False
    """Replace an --out that holds something other than a previous demo."""
    seed: int = 0
    """Seed of every training run and sample."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""
    precision: str = "fp32"
    """Matmul precision of training, evaluation and generation (fp32 or bf16)."""
    progress: bool = False
    """Show progress bars on stderr."""


# ----------------------------------------------------------------------------- memory

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS (process-wide).

    Each training step allocates and frees the (tokens x 50,257) logits, hundreds of MB. glibc
    serves blocks that large with mmap and unmaps them on free, so every step page-faults them in
    afresh: for the demo's small models that measured 1.8x slower on 2 CPU cores. Raising the
    mmap and trim thresholds keeps the blocks in the heap, where the next step reuses them.

    Returns:
        True if glibc took the settings (False on other C libraries, where nothing changes).
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = _libc()
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31))
    except (OSError, AttributeError):
        return False


def _start_memory_measurement() -> bool:
    """Make the next peak-RSS reading (``hardware.peak_rss_mib``) the peak of what follows.

    Freed memory that glibc keeps (see ``keep_freed_memory``) is handed back first, so the
    resident size starts from what is live; then the kernel's peak counter is restarted. Linux
    only; elsewhere the peak stays the process's peak so far.

    Returns:
        True if the peak was restarted.
    """
    import gc

    gc.collect()
    if platform.system() == "Linux":
        try:
            _libc().malloc_trim(0)
        except (OSError, AttributeError):
            pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ----------------------------------------------------------------------------- the base model

@dataclass
class BaseInfo:
    """The base model of a demo run."""

    path: str
    """What ``--model`` should be to load it."""
    embedded: bool
    """True for the embedded default (pretrained by gpt2tune), False for a user's --base."""
    parameters: int
    config: dict
    pretrain: dict | None = None
    """For the embedded default: its ``PretrainConfig``."""
    tokens_seen: int | None = None
    steps: int | None = None
    train_wall_s: float | None = None
    final_train_loss: float | None = None
    val_loss: float | None = None
    """Loss on held-out ``builtin:wiki`` articles (first ``VAL_TOKENS_PER_DOC`` tokens of each)."""
    val_tokens: int | None = None
    unigram_val_loss: float | None = None
    """The same tokens scored by word frequencies alone (see ``unigram_loss``), for scale."""
    built_now: bool = False
    build_s: float | None = None
    """Wall time of building it in this run (pretraining, validation, saving)."""


def pretrain(out: str | Path, cfg: PretrainConfig, *, overwrite: bool = False,
             progress: bool = False) -> BaseInfo:
    """Pretrain a GPT-2 from scratch on ``builtin:wiki`` with the ordinary trainer.

    This is ``gpt2tune train --init scratch --method full --data builtin:wiki`` plus a validation
    loss on held-out wiki articles, recorded with the settings in ``out/base.json``.

    Args:
        out: directory for the model (HF format) and the training logs.
        cfg: size and recipe.
        overwrite: replace what ``out`` holds.
        progress: show a progress bar on stderr.

    Returns:
        What was built (``val_loss`` included).
    """
    t0 = time.perf_counter()
    keep_freed_memory()
    opts = _pretrain_options(out, cfg, overwrite, progress)
    res = fine_tune(opts)
    if res.interrupted:
        raise KeyboardInterrupt
    from gpt2tune.formats.hf import load_model

    model = load_model(out, device=resolve_device(cfg.device))
    tok = Tokenizer(model.source_dir)
    val_docs = [ids.tolist()[:VAL_TOKENS_PER_DOC] for ids in
                tokenize_documents(read_documents("builtin:wiki", split="test"), tok)]
    val = evaluate(model, val_docs, autocast_dtype=autocast_dtype(cfg.precision, _device(model)))
    train_ids = tokenize_documents(read_documents("builtin:wiki", split="train"), tok)
    info = BaseInfo(path=str(Path(out).resolve()), embedded=True, parameters=model.num_params(),
                    config=model.config.to_dict(), pretrain=asdict(cfg),
                    tokens_seen=res.tokens_seen, steps=res.steps, train_wall_s=res.wall_s,
                    final_train_loss=res.final_loss, val_loss=val.loss, val_tokens=val.tokens,
                    unigram_val_loss=unigram_loss(train_ids, val_docs, model.config.vocab_size),
                    built_now=True, build_s=round(time.perf_counter() - t0, 1))
    (Path(out) / BASE_INFO).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def unigram_loss(train_docs: list, val_docs: list[list[int]], vocab_size: int,
                 k: float = 0.1) -> float:
    """Loss of the unigram model of ``train_docs`` (token frequencies with add-``k`` smoothing)
    on the tokens ``evaluate`` scores in ``val_docs``: what knowing only which tokens are common
    is worth, a yardstick for a weak language model."""
    import numpy as np

    counts = np.bincount(np.concatenate([np.asarray(d) for d in train_docs]),
                         minlength=vocab_size).astype(np.float64)
    logp = np.log((counts + k) / (counts.sum() + k * vocab_size))
    scored = np.concatenate([np.asarray(d[1:], dtype=np.int64) for d in val_docs])
    return float(-logp[scored].mean())


def _pretrain_options(out: str | Path, cfg: PretrainConfig, overwrite: bool,
                      progress: bool) -> RunOptions:
    return RunOptions(
        out=str(out), overwrite=overwrite,
        model=ModelOptions(init="scratch", preset=cfg.preset, device=cfg.device),
        data=DataOptions(data="builtin:wiki", block_size=cfg.block_size),
        train=TrainConfig(method="full", max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                          lr=cfg.lr, precision=cfg.precision, seed=cfg.seed, log_every=5,
                          progress=progress))


def _device(model: GPT2) -> torch.device:
    return next(model.parameters()).device


def ensure_base(cfg: PretrainConfig, progress: bool = False) -> BaseInfo:
    """The embedded default base for ``cfg``: from the cache, or pretrained now and cached.

    It is built in a temporary directory and renamed into place, so an interrupted build leaves
    nothing that a later run would take for a finished model.
    """
    root = cache_dir() / "base"
    final = root / cfg.cache_name()
    if (final / BASE_INFO).is_file():
        saved = json.loads((final / BASE_INFO).read_text())
        known = {f.name for f in fields(BaseInfo)}  # tolerate fields of other gpt2tune versions
        info = BaseInfo(**{k: v for k, v in saved.items() if k in known})
        info.path, info.built_now, info.build_s = str(final), False, None
        return info
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{cfg.cache_name()}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info(f"building the embedded base model {cfg.cache_name()} (once; cached in {root})")
    try:
        info = pretrain(tmp, cfg, overwrite=True, progress=progress)
        # the training checkpoint (optimizer state) is only needed to resume; the cache keeps
        # just the model and its logs
        shutil.rmtree(tmp / "checkpoint", ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / BASE_INFO).is_file():  # another process finished first otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info.path = str(final)
    (final / BASE_INFO).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def external_base(name: str) -> BaseInfo:
    """A user's ``--base`` GPT-2 (described, not trained)."""
    from gpt2tune.formats.hf import describe_model

    d = describe_model(name)
    return BaseInfo(path=name, embedded=False, parameters=d["parameters"], config=d["config"])


# ----------------------------------------------------------------------------- commands

def _flag_value(value) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are flags")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return " ".join(_flag_value(v) for v in value)
    return shlex.quote(str(value))


def _flags(obj, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """``--name value`` for each field of dataclass ``obj`` that differs from its default, named
    as ``cli.add_dataclass_args`` names them."""
    default = type(obj)()
    out = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or value == getattr(default, f.name):
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + prefix + f.name.replace("_", "-"))
        elif value is not None:
            out.append(f"{flag} {_flag_value(value)}")
    return out


def train_command(opts: RunOptions) -> str:
    """The ``gpt2tune train`` command line that runs ``fine_tune(opts)``."""
    parts = ["gpt2tune train"]
    parts += _flags(opts, skip=("model", "data", "lora", "train"))
    parts += _flags(opts.model)
    parts += _flags(opts.data)
    parts += _flags(opts.train, skip=("progress",))
    if opts.train.method == "lora":
        parts += _flags(opts.lora, prefix="lora-")
    return " ".join(parts)


def eval_command(base: str, adapter: Path | None, data: str, precision: str) -> str:
    parts = ["gpt2tune eval", f"--model {shlex.quote(base)}"]
    if adapter is not None:
        parts.append(f"--adapter {shlex.quote(str(adapter))}")
    parts.append(f"--data {data}")
    if precision != "fp32":
        parts.append(f"--precision {precision}")
    return " ".join(parts)


def generate_command(model: str, adapter: Path | None, prompt: str, prime_file: Path | None,
                     cfg: SamplingConfig, num_samples: int, precision: str) -> str:
    parts = ["gpt2tune generate", f"--model {shlex.quote(model)}"]
    if adapter is not None:
        parts.append(f"--adapter {shlex.quote(str(adapter))}")
    if prime_file is not None:
        parts.append(f"--prime-file {shlex.quote(str(prime_file))}")
    parts += [f"--prompt {shlex.quote(prompt)}", f"--max-new-tokens {cfg.max_new_tokens}",
              f"--temperature {cfg.temperature!r}", f"--top-k {cfg.top_k}",
              f"--num-samples {num_samples}", f"--seed {cfg.seed}"]
    if precision != "fp32":
        parts.append(f"--precision {precision}")
    return " ".join(parts)


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def primed_evaluate(model: GPT2, docs: list[list[int]], prime: list[int], *,
                    batch_size: int = 8, amp_dtype: torch.dtype | None = None) -> EvalResult:
    """Held-out loss when each document is preceded by ``prime`` (priming).

    The scored tokens are exactly those ``evaluate`` scores (every token of a document after its
    first), so primed and unprimed perplexities compare directly; the prime is context only.
    Windows are as in ``evaluate``: the model's context, then steps of half of it.
    """
    context = model.config.n_positions
    items = [w for doc in docs
             for w in windows(prime + doc, context, context // 2, start=len(prime) + 1)]
    return score_windows(model, items, batch_size=batch_size, autocast_dtype=amp_dtype)


def pick_prime(speeches: list[str], tokenizer: Tokenizer, n: int, seed: int,
               min_tokens: int = 20, max_tokens: int = 50) -> str:
    """``n`` training speeches of moderate length, joined by blank lines: the priming text.

    Mid-length speeches show the voice without filling the small context.
    """
    import random

    fitting = [s for s in speeches if min_tokens <= len(tokenizer.encode(s)) <= max_tokens]
    chosen = sorted(random.Random(seed).sample(range(len(fitting)), min(n, len(fitting))))
    return "\n\n".join(fitting[i] for i in chosen) + "\n\n"


# ----------------------------------------------------------------------------- runs

@dataclass
class Run:
    """One fine-tuning run of the demo and what was measured about it."""

    key: str
    """Directory name under the experiment's directory."""
    label: str
    method: str
    out: Path
    options: RunOptions
    result: TrainResult | None = None
    heldout: EvalResult | None = None
    size_bytes: int = 0
    """Size of what is saved: the adapter files, or the model with its tokenizer files."""
    rss_before_mib: float = float("nan")
    total_s: float = 0.0
    """Wall time of training, evaluation and saving."""

    def history(self) -> list[dict]:
        return self.result.history if self.result else []


def _saved_size(out: Path, method: str) -> int:
    if method == "lora":
        names = ("adapter_config.json", "adapter_model.safetensors")
    else:
        names = ("config.json", "model.safetensors", "vocab.json", "merges.txt",
                 "tokenizer_config.json")
    return sum((out / n).stat().st_size for n in names if (out / n).is_file())


def load_trained(base_path: str, run: Run, device: torch.device) -> GPT2:
    """The model a run produced: the base plus its adapter, or the fully trained model."""
    from gpt2tune.formats.hf import load_model
    from gpt2tune.formats.peft import load_adapter

    if run.method == "lora":
        model = load_model(base_path, device=device)
        load_adapter(model, run.out)
        return model
    return load_model(run.out, device=device)


class Demo:
    """One demo run: holds the options, the base model and every measurement, step by step."""

    def __init__(self, opts: DemoOptions, plan: DemoPlan | None = None) -> None:
        self.opts = opts
        self.plan = plan or (QUICK_PLAN if opts.quick else FULL_PLAN)
        if opts.precision not in ("fp32", "bf16"):
            raise UserError(f"--precision {opts.precision!r}: use fp32 or bf16")
        self.pretrain_cfg = replace(self.plan.pretrain, device=opts.device, seed=opts.seed,
                                    precision=opts.precision)
        self.out = Path(opts.out)
        self.device = resolve_device(opts.device)
        self.amp = autocast_dtype(opts.precision, self.device)
        self.timings: dict[str, float] = {}
        self.runs: dict[str, Run] = {}
        self.evals: dict[str, EvalResult] = {}
        self.samples: dict[str, dict[str, list[str]]] = {}
        self.commands: list[tuple[str, str]] = []
        self.peak_reset_works = False
        self.load_at_start = _loadavg()
        # set by the steps below, in order
        self.base: BaseInfo
        self.base_model: GPT2
        self.tok: Tokenizer
        self.classifier: StyleClassifier
        self.character_name = opts.character.upper()
        self.character_counts = (0, 0)
        self.prime_text = ""
        self.prime_file = self.out / "character" / "prime.txt"
        self.prime_tokens = 0
        self.wide_key = ""

    # --------------------------------------------------------------- helpers

    @contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        """Log the start and end of a stage and record its wall time under ``name``."""
        log.info(f"demo: {name} ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 1)
        log.info(f"demo: {name} done in {self.timings[name]:.0f}s")

    def _sampling(self, seed_offset: int = 0) -> SamplingConfig:
        p = self.plan
        return SamplingConfig(max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                              top_k=p.top_k, seed=self.opts.seed + seed_offset)

    def _run_options(self, out: Path, data: str, method: str, lora: LoRAConfig | None,
                     epochs: float | None, max_steps: int | None, eval_every: int) -> RunOptions:
        p = self.plan
        train = TrainConfig(method=method, batch_size=p.batch_size,
                            lr=p.lr_lora if method == "lora" else p.lr_full,
                            precision=self.opts.precision, seed=self.opts.seed,
                            eval_every=eval_every, progress=self.opts.progress)
        if max_steps is not None:
            train.max_steps = max_steps
        else:
            train.epochs = epochs
        return RunOptions(out=str(out), overwrite=True,
                          model=ModelOptions(model=self.base.path, device=self.opts.device),
                          data=DataOptions(data=data, val_data=data),
                          lora=lora or LoRAConfig(), train=train)

    def _lora(self, r: int, targets: tuple[str, ...] = ("c_attn",)) -> LoRAConfig:
        return LoRAConfig(r=r, alpha=self.plan.lora_alpha_per_rank * r, targets=list(targets))

    def train_run(self, run: Run, test_docs: list[list[int]]) -> Run:
        """Fine-tune, then measure held-out loss and saved size; drop the resume checkpoint."""
        with self._timed(f"{run.out.parent.name}: {run.label}"):
            t0 = time.perf_counter()
            self.peak_reset_works = _start_memory_measurement()
            run.rss_before_mib = _rss_mib()
            run.result = fine_tune(run.options)
            if run.result.interrupted:
                raise KeyboardInterrupt
            model = load_trained(self.base.path, run, self.device)
            run.heldout = evaluate(model, test_docs, autocast_dtype=self.amp)
            run.size_bytes = _saved_size(run.out, run.method)
            # the resume checkpoint and the best-so-far copy duplicate the result (a full model's
            # checkpoint holds 3x its weights); the demo keeps the result and the logs
            for extra in ("checkpoint", "best"):
                shutil.rmtree(run.out / extra, ignore_errors=True)
            run.total_s = round(time.perf_counter() - t0, 1)
        self.runs[f"{run.out.parent.name}/{run.key}"] = run
        self.commands.append((f"{run.out.parent.name}: {run.label}", train_command(run.options)))
        return run

    def _generate(self, model: GPT2, prompt: str, n: int, prime: str | None,
                  seed_offset: int) -> list[str]:
        return [s.text for s in generate(model, self.tok, prompt, self._sampling(seed_offset),
                                         prime=prime, num_samples=n, autocast_dtype=self.amp)]

    # --------------------------------------------------------------- steps

    def prepare_out(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; give a directory")
        if out.is_dir() and any(out.iterdir()):
            if not (out / DEMO_MARKER).is_file() and not self.opts.overwrite:
                raise UserError(f"--out {out} holds files that are not a gpt2tune demo; pass "
                                "--overwrite to replace them, or choose another --out")
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / DEMO_MARKER).write_text(json.dumps({"options": asdict(self.opts)}, indent=2) + "\n")

    def load_base(self) -> None:
        from gpt2tune.formats.hf import load_model

        with self._timed("base model"):
            if self.opts.base:
                self.base = external_base(self.opts.base)
            else:
                self.base = ensure_base(self.pretrain_cfg, progress=self.opts.progress)
            self.base_model = load_model(self.base.path, device=self.device)
            self.tok = Tokenizer(self.base_model.source_dir)
        if self.base.embedded:
            self.commands.append(("the embedded base model", pretrain_command(self.base)))

    def news(self) -> None:
        """Experiment 1: base vs LoRA vs full fine-tuning on the news articles."""
        p = self.plan
        docs = [d.tolist() for d in tokenize_documents(read_documents("builtin:news", split="test"),
                                                       self.tok)]
        with self._timed("news: base model"):
            self.evals["news/base"] = evaluate(self.base_model, docs, autocast_dtype=self.amp)
        root = self.out / "news"
        lora = Run("lora", f"LoRA r={p.news_rank} (c_attn)", "lora", root / "lora",
                   self._run_options(root / "lora", "builtin:news", "lora", self._lora(p.news_rank),
                                     p.news_epochs, p.news_max_steps, p.news_eval_every))
        full = Run("full", "full fine-tuning", "full", root / "full",
                   self._run_options(root / "full", "builtin:news", "full", None, p.news_epochs,
                                     p.news_max_steps, p.news_eval_every))
        self.train_run(lora, docs)
        self.train_run(full, docs)
        with self._timed("news: samples"):
            samples = {"base": self._generate(self.base_model, NEWS_PROMPT, p.news_samples,
                                              None, 0)}
            for run in (lora, full):
                model = load_trained(self.base.path, run, self.device)
                samples[run.key] = self._generate(model, NEWS_PROMPT, p.news_samples, None, 0)
            self.samples["news"] = samples
        for label, run in (("base model", None), ("LoRA", lora), ("full", full)):
            adapter = run.out if run and run.method == "lora" else None
            model_path = run.out if run and run.method == "full" else self.base.path
            self.commands.append((f"news: evaluate {label}",
                                  eval_command(str(model_path), adapter, "builtin:news",
                                               self.opts.precision)))
            self.commands.append((f"news: samples of {label}",
                                  generate_command(str(model_path), adapter, NEWS_PROMPT, None,
                                                   self._sampling(0), p.news_samples,
                                                   self.opts.precision)))

    def character(self) -> None:
        """Experiments 2 and 3: priming, LoRA (a rank sweep) and full fine-tuning on one voice."""
        p = self.plan
        data = f"builtin:shakespeare:{self.opts.character}"
        root = self.out / "character"
        train_speeches = read_documents(data, split="train")
        test_texts = read_documents(data, split="test")
        docs = [d.tolist() for d in tokenize_documents(test_texts, self.tok)]
        self.character_counts = (len(train_speeches), len(docs))

        with self._timed("character: style classifier"):
            self.classifier = train_style_classifier(self.character_name)
        self.prime_text = pick_prime(train_speeches, self.tok, p.prime_speeches, self.opts.seed)
        root.mkdir(parents=True, exist_ok=True)
        self.prime_file.write_text(self.prime_text, encoding="utf-8")
        prime_ids = self.tok.encode(self.prime_text)
        self.prime_tokens = len(prime_ids)

        with self._timed("character: base model and priming"):
            self.evals["character/base"] = evaluate(self.base_model, docs, autocast_dtype=self.amp)
            self.evals["character/priming"] = primed_evaluate(self.base_model, docs, prime_ids,
                                                              amp_dtype=self.amp)

        ranks = list(dict.fromkeys([p.char_rank, *p.ranks]))  # the experiment-2 run first
        for r in ranks:
            key = f"lora-r{r}"
            self.train_run(Run(key, f"LoRA r={r} (c_attn)", "lora", root / key,
                               self._run_options(root / key, data, "lora", self._lora(r),
                                                 p.char_epochs, p.char_max_steps,
                                                 p.char_eval_every)), docs)
        wide_key = f"lora-r{p.wide_rank}-{'-'.join(p.wide_targets)}"
        self.train_run(Run(wide_key, f"LoRA r={p.wide_rank} ({', '.join(p.wide_targets)})", "lora",
                           root / wide_key,
                           self._run_options(root / wide_key, data, "lora",
                                             self._lora(p.wide_rank, p.wide_targets),
                                             p.char_epochs, p.char_max_steps, p.char_eval_every)),
                       docs)
        self.wide_key = wide_key
        full = self.train_run(Run("full", "full fine-tuning", "full", root / "full",
                                  self._run_options(root / "full", data, "full", None,
                                                    p.char_epochs, p.char_max_steps,
                                                    p.char_eval_every)), docs)
        lora = self.runs[f"character/lora-r{p.char_rank}"]

        with self._timed("character: LoRA + priming, samples, style scores"):
            lora_model = load_trained(self.base.path, lora, self.device)
            full_model = load_trained(self.base.path, full, self.device)
            self.evals["character/lora+priming"] = primed_evaluate(lora_model, docs, prime_ids,
                                                                   amp_dtype=self.amp)
            methods = {"base": (self.base_model, None),
                       "priming": (self.base_model, self.prime_text),
                       "lora": (lora_model, None), "full": (full_model, None),
                       "lora+priming": (lora_model, self.prime_text)}
            self.samples["character"] = {}
            for key, (model, prime) in methods.items():
                texts = []
                for i, prompt in enumerate(p.char_prompts):
                    texts += self._generate(model, prompt, p.samples_per_prompt, prime, i)
                self.samples["character"][key] = texts
        base_path, lora_dir = self.base.path, lora.out
        for label, model_path, adapter, prime in (
                ("base model", base_path, None, None),
                ("priming", base_path, None, self.prime_file),
                ("LoRA", base_path, lora_dir, None), ("full", full.out, None, None),
                ("LoRA + priming", base_path, lora_dir, self.prime_file)):
            if prime is None:
                self.commands.append((f"character: evaluate {label}",
                                      eval_command(str(model_path), adapter, data,
                                                   self.opts.precision)))
            self.commands.append((f"character: samples of {label} (first prompt)",
                                  generate_command(str(model_path), adapter, p.char_prompts[0],
                                                   prime, self._sampling(0), p.samples_per_prompt,
                                                   self.opts.precision)))

    # --------------------------------------------------------------- results

    def results(self) -> dict:
        """Every number of the demo as plain data (also written to ``results.json``)."""
        def run_dict(run: Run) -> dict:
            res = run.result
            return {"label": run.label, "method": run.method, "out": str(run.out),
                    "trainable_params": res.trainable_params, "total_params": res.total_params,
                    "steps": res.steps, "tokens_seen": res.tokens_seen, "train_wall_s": res.wall_s,
                    "total_s": run.total_s, "peak_rss_mib": res.peak_memory_mib,
                    "rss_before_mib": round(run.rss_before_mib, 1),
                    "final_train_loss": res.final_loss, "heldout_loss": run.heldout.loss,
                    "heldout_perplexity": run.heldout.perplexity, "saved_bytes": run.size_bytes,
                    "command": train_command(run.options)}

        style = {}
        if self.samples.get("character"):
            h = self.classifier.heldout
            style = {"heldout_accuracy": h.accuracy,
                     "heldout_in_character_rate": h.in_character_rate,
                     "heldout_false_positive_rate": h.false_positive_rate,
                     "heldout_positives": h.positives, "heldout_negatives": h.negatives,
                     "share_in_character": {k: self.classifier.share_in_character(v)
                                            for k, v in self.samples.get("character", {}).items()}}
        return {"options": asdict(self.opts), "plan": asdict(self.plan), "base": asdict(self.base),
                "evals": {k: v.to_dict() for k, v in self.evals.items()},
                "runs": {k: run_dict(v) for k, v in self.runs.items()},
                "style": style, "samples": self.samples, "timings": self.timings,
                "commands": self.commands}


def pretrain_command(base: BaseInfo, out: str = "runs/demo-base") -> str:
    """The ``gpt2tune pretrain`` command that builds ``base`` again (into ``out``)."""
    cfg = PretrainConfig(**base.pretrain)
    parts = ["gpt2tune pretrain", f"--out {shlex.quote(out)}"]
    parts += _flags(replace(cfg, device="auto"))
    return " ".join(parts)


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


# ----------------------------------------------------------------------------- entry point

@dataclass
class DemoResult:
    """Where the report is and the headline numbers."""

    report_md: Path
    report_html: Path
    wall_s: float
    results: dict = field(default_factory=dict)


def run_demo(opts: DemoOptions, plan: DemoPlan | None = None) -> DemoResult:
    """Run the three experiments and write ``report.md``, ``report.html`` and ``results.json``.

    Args:
        opts: what to run (``opts.quick`` picks the small plan).
        plan: override the sizes (tests); default ``QUICK_PLAN`` or ``FULL_PLAN``.

    Returns:
        The report's paths, the total wall time and every number (as in ``results.json``).
    """
    t0 = time.perf_counter()
    keep_freed_memory()
    demo = Demo(opts, plan)
    demo.prepare_out()
    demo.load_base()
    demo.news()
    demo.character()
    demo.timings["total before the report"] = round(time.perf_counter() - t0, 1)
    from gpt2tune.report.document import build_report, write_report

    with demo._timed("report"):
        report = build_report(demo)
        md, page = write_report(report, demo.out)
    wall = round(time.perf_counter() - t0, 1)
    demo.timings["total"] = wall
    results = demo.results()
    (demo.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return DemoResult(report_md=md, report_html=page, wall_s=wall, results=results)
