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
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.core.model import GPT2
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import tokenize_documents
from gpt2tune.data.sources import read_documents
from gpt2tune.errors import UserError
from gpt2tune.experiments.base import (
    BaseInfo,
    PretrainConfig,
    ensure_base,
    external_base,
    pretrain,  # noqa: F401  (the CLI's import, until it takes it from experiments.base)
)
from gpt2tune.experiments.commands import (
    eval_command,
    generate_command,
    pretrain_command,
    train_command,
)
from gpt2tune.experiments.spec import (
    FULL_PLAN,
    NEWS_PROMPT,
    QUICK_PLAN,
    DemoOptions,
    DemoPlan,
)
from gpt2tune.experiments.style import StyleClassifier, train_style_classifier
from gpt2tune.finetune.config import TrainConfig, TrainResult
from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions, fine_tune
from gpt2tune.inference.evaluate import EvalResult, evaluate, score_windows, windows
from gpt2tune.inference.generate import SamplingConfig, generate
from gpt2tune.runtime import (
    autocast_dtype,
    resolve_device,
    restart_peak_memory,
    rss_mib,
)

log = logging.getLogger("gpt2tune")

DEMO_MARKER = "demo.json"

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
            self.peak_reset_works = restart_peak_memory()
            run.rss_before_mib = rss_mib()
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
            self.commands.append(("the embedded base model", pretrain_command(PretrainConfig(**self.base.pretrain))))

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
