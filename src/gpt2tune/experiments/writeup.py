"""The demo's write-up: its results (``experiments.results.DemoResults``) as a report document.

``build_report`` reads only the results value (numbers, texts, specs) and draws the figures from
it; ``gpt2tune.report`` renders the document to Markdown and HTML.
"""

from __future__ import annotations

import math

from gpt2tune.experiments.base import VAL_TOKENS_PER_DOC
from gpt2tune.experiments.results import (
    CompareResults,
    DemoResults,
    ExperimentResult,
    MethodResult,
)
from gpt2tune.experiments.spec import Hyperparams
from gpt2tune.report import figures
from gpt2tune.report.document import Code, Columns, Figure, Paragraph, Report, Table

# The report's sections, in order (the end-to-end test checks that each is there).
SECTIONS = ("Summary", "The base model", "Experiment 1: news style",
            "Experiment 2: character voice", "Experiment 3: LoRA capacity (rank sweep)",
            "Rerun any single experiment", "Machine and versions", "Timings")


def _capacity_verdict(sweep: list[MethodResult], best: MethodResult, wide: MethodResult,
                      full: MethodResult, base_loss: float) -> str:
    """What the rank sweep says, in words chosen from the measured held-out losses.

    Each run is measured by the share of full fine-tuning's gain over the base it recovers.
    """
    lo, hi = sweep[0], sweep[-1]
    gain_full = base_loss - full.val_loss
    text = (f"Going from r={lo.lora_rank} to r={hi.lora_rank} multiplies LoRA's "
            f"trainable parameters by "
            f"{hi.trainable_params / lo.trainable_params:.0f} and changes the "
            f"held-out loss by {hi.val_loss - lo.val_loss:+.3f} nats. Against the base, "
            f"full fine-tuning gains {gain_full:.3f} nats, the best rank "
            f"{base_loss - best.val_loss:.3f} and {wide.label} "
            f"{base_loss - wide.val_loss:.3f}. ")
    if gain_full <= 0:
        return text + ("Full fine-tuning did not improve on the base here, so there is no "
                       "reference to measure LoRA's capacity against.")

    def share(run: MethodResult) -> float:
        return (base_loss - run.val_loss) / gain_full

    if share(best) >= 0.8:
        return text + (f"The best rank recovers {share(best):.0%} of full fine-tuning's gain: on "
                       "this task LoRA's capacity is not what holds it back.")
    if share(lo) + 0.1 < share(best):
        return text + (f"Rank matters: from r={lo.lora_rank} to the best rank the share of "
                       f"full fine-tuning's gain rises from {share(lo):.0%} to "
                       f"{share(best):.0%}, so here capacity does limit LoRA.")
    text += (f"The best rank recovers {share(best):.0%} of full fine-tuning's gain and r="
             f"{lo.lora_rank} already {share(lo):.0%}: more rank on the same modules does "
             "not close the gap, so rank is not the missing capacity. ")
    if share(wide) > share(best) + 0.1:
        text += (f"Adapting every projection does better ({share(wide):.0%}): where LoRA adapts "
                 "matters more than its rank. ")
    else:
        text += "Adapting every projection does not close it either. "
    return text + ("Full fine-tuning also trains the token embeddings, most of this small "
                   "model's weights, which LoRA on the blocks leaves frozen.")


LORA_VARIANTS = ("dora", "lora+")
"""Kinds of method that change how LoRA trains, each set beside plain LoRA in the reports."""


def _method_of(run: MethodResult) -> str:
    """The method part of a run's label: "DoRA" of "DoRA r=4 (c_attn)"."""
    return run.label.split(" r=")[0]


def _variants_verdict(pairs: list[tuple[MethodResult, MethodResult | None]],
                      full: MethodResult | None, base_loss: float) -> str:
    """Whether DoRA and LoRA+ close the gap to full fine-tuning, in words chosen from the
    measured held-out losses.

    Args:
        pairs: each DoRA or LoRA+ run with the plain LoRA run it differs from in one thing (the
            same rank, modules and learning rate), or None where there is no such run.
        full: full fine-tuning, the reference, or None.
        base_loss: the base model's held-out loss.
    """
    runs: list[MethodResult] = []  # each run once, a plain LoRA run before its variants
    for run in (run for pair in pairs for run in pair[::-1]):
        if run is not None and all(run is not seen for seen in runs):
            runs.append(run)
    gains = "; ".join(f"{run.label} gains {base_loss - run.val_loss:.3f} nats over the base"
                      for run in runs) + ". "
    if full is None or base_loss - full.val_loss <= 0:
        return gains + ("Without a full fine-tuning run that improves on the base there is no "
                        "gap to measure them against.")
    gain_full = base_loss - full.val_loss
    text = f"Full fine-tuning gains {gain_full:.3f} nats; " + gains

    def share(run: MethodResult) -> float:
        return (base_loss - run.val_loss) / gain_full

    for run, lora in pairs:
        said = f"{_method_of(run)} recovers {share(run):.0%} of full fine-tuning's gain"
        if lora is not None:
            said += f", plain LoRA {share(lora):.0%}"
        if share(run) >= 0.8:
            said += ": it closes the gap"
        elif lora is not None and share(run) > share(lora) + 0.1:
            said += ": it narrows the gap but does not close it"
        elif lora is not None and share(run) < share(lora) - 0.1:
            said += ": it does worse than plain LoRA"
        elif lora is not None:
            said += ": it changes little and does not close the gap"
        else:
            said += ": it does not close the gap"
        text += said + ". "
    return text.strip()


def _fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:,}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _fmt_ppl(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _training_state_bytes(total: int, trainable: int) -> int:
    """fp32 weights, and a gradient and AdamW's two moments per trainable weight."""
    return 4 * total + 12 * trainable


def _epochs(n: float | None) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _lora_by_rank(exp: ExperimentResult, targets: tuple[str, ...]) -> dict[int, MethodResult]:
    """The experiment's LoRA runs on ``targets``, by rank."""
    return {m.lora_rank: m for m in exp.methods
            if m.method == "lora" and m.lora_targets == tuple(targets)}


def _recipe(hp: Hyperparams, budget_note: str) -> list[Paragraph]:
    """The hyperparameters chosen for the base and why, and what ``--max-minutes`` did."""
    out = [Paragraph(f"Hyperparameters follow the base ({hp.recipe}): LoRA learning rate "
                     f"{hp.lr_lora:g} with alpha = {hp.alpha_per_rank:g} r, full fine-tuning "
                     f"{hp.lr_full:g}. {hp.why}")]
    if budget_note:
        out.append(Paragraph(budget_note + "."))
    return out


def build_report(res: DemoResults) -> Report:
    """The report document of a finished demo.

    Args:
        res: the demo's results.

    Returns:
        The document, its figures (PNG bytes) included.
    """
    p, b, hp, news, char = res.plan, res.base, res.hyperparams, res.news, res.character
    news_base, news_lora, news_full = (news.method(k) for k in ("base", "lora", "full"))
    char_base, priming, char_lora, char_full, lora_priming = (
        char.method(k) for k in ("base", "priming", "lora", "full", "lora+priming"))
    clf = char.style
    name = res.options.character.upper().title()
    base_label = "the embedded default base" if b.embedded else f"`{b.path}`"
    prompt = news.spec.prompts[0]

    r = Report(f"gpt2tune demo{' (quick)' if res.options.quick else ''}: LoRA, full fine-tuning "
               f"and priming on news and {name}")
    r.intro.append(Paragraph(
        f"Run on {res.finished} in "
        f"{res.timings.get('total before the report', 0):.0f} s "
        f"with {base_label} ({_fmt_params(b.parameters)} parameters). Every number below comes "
        "from the ordinary `gpt2tune train/eval/generate` code paths; the commands are at the "
        "end."))

    # ---- summary
    s = r.section(SECTIONS[0])
    s.add(Paragraph(
        f"**News style.** Held-out perplexity on the 50 test articles of `builtin:news`: base "
        f"{_fmt_ppl(news_base.val_perplexity)}, LoRA r={p.news_rank} "
        f"{_fmt_ppl(news_lora.val_perplexity)} "
        f"({_fmt_params(news_lora.trainable_params)} trainable parameters, "
        f"{_fmt_bytes(news_lora.saved_bytes)} saved), full fine-tuning "
        f"{_fmt_ppl(news_full.val_perplexity)} "
        f"({_fmt_params(news_full.trainable_params)} trainable, "
        f"{_fmt_bytes(news_full.saved_bytes)} saved)."))
    s.add(Paragraph(
        f"**{name}'s voice.** Held-out perplexity on {name}'s test speeches: base "
        f"{_fmt_ppl(char_base.val_perplexity)}, priming "
        f"{_fmt_ppl(priming.val_perplexity)}, LoRA r={p.char_rank} "
        f"{_fmt_ppl(char_lora.val_perplexity)}, full {_fmt_ppl(char_full.val_perplexity)}, "
        f"LoRA + priming {_fmt_ppl(lora_priming.val_perplexity)}. Samples judged in "
        f"character by the style classifier (held-out balanced accuracy "
        f"{_pct(clf.heldout.accuracy)}; chance 50%): base {_pct(char_base.style_share)}, priming "
        f"{_pct(priming.style_share)}, LoRA {_pct(char_lora.style_share)}, full "
        f"{_pct(char_full.style_share)}, LoRA + priming {_pct(lora_priming.style_share)}; real "
        f"held-out speeches {_pct(clf.heldout.in_character_rate)}."))
    by_rank = _lora_by_rank(char, ("c_attn",))
    sweep = [by_rank[rk] for rk in p.ranks]
    wide = _lora_by_rank(char, p.wide_targets)[p.wide_rank]
    variants = [m for m in char.methods if m.method in LORA_VARIANTS]
    best = min(sweep, key=lambda run: run.val_perplexity)
    s.add(Paragraph(
        f"**Capacity.** Across ranks {', '.join(map(str, p.ranks))} the held-out perplexity goes "
        f"from {_fmt_ppl(sweep[0].val_perplexity)} (r={p.ranks[0]}) to "
        f"{_fmt_ppl(sweep[-1].val_perplexity)} (r={p.ranks[-1]}); the best rank is "
        f"r={best.lora_rank} ({_fmt_ppl(best.val_perplexity)}); "
        + "".join(f"{_method_of(run)} at r={run.lora_rank} "
                  f"{_fmt_ppl(run.val_perplexity)}; " for run in variants)
        + f"full fine-tuning reaches {_fmt_ppl(char_full.val_perplexity)}. See experiment 3 "
        "for what that says about the seed project's explanation."))
    s.add(Figure(figures.perplexity_by_method(
        {"base": news_base.val_perplexity, f"LoRA r={p.news_rank}": news_lora.val_perplexity,
         "full": news_full.val_perplexity},
        {"base": char_base.val_perplexity, "priming": priming.val_perplexity,
         f"LoRA r={p.char_rank}": char_lora.val_perplexity,
         "full": char_full.val_perplexity,
         "LoRA + priming": lora_priming.val_perplexity}, name),
        "perplexity_by_method.png", "Held-out perplexity by method (lower is better)."))
    if b.embedded:
        s.add(Paragraph(
            "**Read these numbers as a demonstration of the method, not of GPT-2.** The base "
            "here is a tiny model pretrained for a few minutes; with a real GPT-2 (`--base gpt2` "
            "or a local copy) perplexities are far lower and the samples are fluent, so the size "
            "of each effect differs."))

    # ---- base model
    s = r.section(SECTIONS[1])
    if b.embedded:
        cfg = b.config
        s.add(Paragraph(
            f"The embedded default: a GPT-2 with {cfg['n_layer']} layers, {cfg['n_head']} heads, "
            f"width {cfg['n_embd']} and a context of {cfg['n_positions']} tokens "
            f"({b.parameters:,} parameters, {cfg['vocab_size'] * cfg['n_embd']:,} of them the "
            f"token embedding that GPT-2's 50,257-token vocabulary needs), pretrained from scratch "
            f"on `builtin:wiki` (Wikipedia articles from gensim's test data) with gpt2tune's own "
            f"trainer: {b.steps:,} steps, {_fmt_int(b.tokens_seen)} tokens seen, "
            f"{b.train_wall_s:.0f} s of training. Validation loss on the held-out wiki articles "
            f"(first {VAL_TOKENS_PER_DOC:,} tokens of each, {_fmt_int(b.val_tokens)} tokens): "
            f"**{b.val_loss:.3f}** (perplexity {_fmt_ppl(math.exp(b.val_loss))})."))
        uni = b.unigram_val_loss
        if uni is not None:
            verdict = ("about what" if abs(b.val_loss - uni) < 0.05 else
                       "a little better than" if b.val_loss < uni else "worse than")
            s.add(Paragraph(
                f"For scale: word frequencies alone (a unigram model of the same training text) "
                f"score {uni:.3f} on those tokens, so the base is {verdict} a model that knows "
                "only which tokens are common. A few hundred thousand tokens on two CPU cores "
                "teach little more than that."))
        s.add(Paragraph(f"It is cached in `{b.path}` and reused; "
                        + (f"this run built it in {b.build_s:.0f} s." if b.built_now else
                           "this run found it in the cache.")))
        s.add(Paragraph(
            "**Results with a real GPT-2 differ**: it has read billions of tokens, so fine-tuning "
            "starts from fluent English and the gaps between methods change. Run "
            "`gpt2tune demo --base gpt2` (online) or `--base DIR` with a local GPT-2 for the real "
            "experiment."))
        s.add(Table(["setting", "value"],
                    [[k, str(v)] for k, v in b.pretrain.items() if k != "device"],
                    caption="Pretraining recipe (the cache key)", numeric=[False, False]))
    else:
        s.add(Paragraph(f"`{b.path}`: a GPT-2 given with `--base` ({b.parameters:,} parameters, "
                        f"{b.config['n_layer']} layers, width {b.config['n_embd']})."))

    s.add(Paragraph(f"Why this base: {b.reason}." if b.reason else "Given with `--base`."))
    s.add(*_recipe(hp, res.budget_note))

    # ---- experiment 1
    s = r.section(SECTIONS[2])
    epochs = (_epochs(p.news_epochs) if p.news_max_steps is None
              else f"{p.news_max_steps} steps")
    s.add(Paragraph(
        f"Train on the 300 training articles of `builtin:news` (ABC news), {epochs} of "
        f"{p.batch_size} rows x {news_lora.block_size} tokens for both methods, same "
        f"data order; evaluate on the 50 held-out articles ({news_base.val_tokens:,} tokens). "
        f"LoRA: r={p.news_rank}, alpha={hp.alpha_per_rank * p.news_rank:g} on `c_attn` (the "
        f"seed's setting), lr {hp.lr_lora:g}; full: every weight, lr {hp.lr_full:g}."))
    rows = [["base model", "0", "–", _fmt_ppl(news_base.val_perplexity),
             f"{news_base.val_loss:.3f}", "–", "–", "–", "–"]]
    for run in (news_lora, news_full):
        rows.append([run.label, f"{run.trainable_params:,}",
                     f"{100 * run.trainable_params / run.total_params:.2f}%",
                     _fmt_ppl(run.val_perplexity), f"{run.val_loss:.3f}",
                     f"{run.train_seconds:.0f} s", f"{run.peak_memory_mib:,.0f} MiB",
                     _fmt_bytes(_training_state_bytes(run.total_params, run.trainable_params)),
                     _fmt_bytes(run.saved_bytes)])
    s.add(Table(["method", "trainable params", "% of model", "held-out perplexity", "loss (nats)",
                 "train wall time", "peak RSS", "weights + grads + AdamW state",
                 "saved on disk"], rows))
    s.add(Paragraph(
        "Peak RSS is the demo process's resident memory during the run (Python, torch, the base "
        f"model and the data account for about {news_lora.rss_before_mib:,.0f} MiB of it)"
        + ("" if news_lora.peak_memory_own and news_full.peak_memory_own else "; this OS "
           "cannot restart the peak, so each value is the peak so far in the demo")
        + ". At this model size it is dominated by the (tokens x 50,257) logits of a batch, which "
          "both methods compute, and it moves with the memory allocator, so it barely separates "
          "them. The training state is exact: fp32 weights, plus gradients and AdamW's two "
          "moments for the trainable ones (with GPT-2 124M: 0.5 GiB under LoRA, 1.9 GiB for full "
          "fine-tuning). What is saved: the adapter files for LoRA; the model with its tokenizer "
          "files for full fine-tuning."))
    s.add(Figure(figures.loss_curves([
        ("News", [(m.label, m.history) for m in (news_lora, news_full)]),
        (name, [(m.label, m.history) for m in (char_lora, wide, char_full)])]),
        "loss_curves.png", "Loss curves: training loss (thin, smoothed) and held-out loss "
                           "(markers) against optimizer steps, per method."))
    s.add(Paragraph(f"Samples from the prompt “{prompt}” (same seed for every method; "
                    f"temperature {p.temperature:g}, top-k {p.top_k}, {p.max_new_tokens} new "
                    "tokens at most):"))
    for i in range(p.news_samples):
        s.add(Columns([f"{label} (sample {i + 1})"
                       for label in ("base model", news_lora.label, news_full.label)],
                      [prompt + m.samples[i] for m in (news_base, news_lora, news_full)]))

    # ---- experiment 2
    s = r.section(SECTIONS[3])
    s.add(Paragraph(
        f"{char.train_docs} training speeches of {name} (`builtin:shakespeare:"
        f"{res.options.character}`), {char.test_docs} held out. Priming places "
        f"{p.prime_speeches} training speeches ({char.prime.tokens} tokens, in "
        f"`{char.prime.file}`) before the prompt and before each held-out speech when scoring "
        "it; only the speech's own tokens are scored, the same tokens as without priming. LoRA: "
        f"r={p.char_rank} on `c_attn`; every method trains "
        + (f"{_epochs(p.char_epochs)}." if p.char_max_steps is None
           else f"{p.char_max_steps} steps.")))
    order = [(char_base, "base model"), (priming, "priming only"), (char_lora, char_lora.label),
             (char_full, "full fine-tuning"), (lora_priming, lora_priming.label)]
    rows = [[label, f"{m.trainable_params:,}",
             _fmt_ppl(m.val_perplexity), f"{m.val_loss:.3f}", _pct(m.style_share),
             f"{m.style_probability:.2f}", str(len(m.samples))] for m, label in order]
    h = clf.heldout
    rows.append([f"reference: real held-out {name} speeches", "–", "–", "–",
                 _pct(h.in_character_rate), "–", str(h.positives)])
    rows.append(["reference: other characters' held-out speeches", "–", "–", "–",
                 _pct(h.false_positive_rate), "–", str(h.negatives)])
    s.add(Table(["method", "trainable params", "held-out perplexity", "loss (nats)",
                 "judged in character", "mean P(character)", "samples"], rows))
    s.add(Paragraph(
        f"**The style score.** A classifier (TF-IDF of character 2–5-grams, logistic regression) "
        f"trained on {clf.train_sizes[0]} of {name}'s training speeches against "
        f"{clf.train_sizes[1]} speeches of other characters (cut to {clf.max_chars} "
        f"characters, speeches under {clf.min_chars} characters skipped). On speeches it "
        f"never saw its balanced accuracy is **{_pct(h.accuracy)}** (chance: 50%): it judges "
        f"{_pct(h.in_character_rate)} of {name}'s {h.positives} held-out speeches and "
        f"{_pct(h.false_positive_rate)} of {h.negatives} other speeches to be {name}'s. Those two "
        "reference rows bound what a sample can score. The n-grams that most point to "
        f"{name}: " + ", ".join(f"`{f.strip() or repr(f)}`" for f in clf.top_features[:8]) + "."))
    s.add(Figure(figures.style_scores({label: m.style_share for m, label in order},
                                      h.in_character_rate, h.false_positive_rate, name),
                 "style_scores.png",
                 f"Share of generated samples the classifier judges to be {name}'s."))
    if char_base.style_share > h.false_positive_rate + 0.2:
        s.add(Paragraph(
            f"**Read the style scores with care.** The base model has never seen Shakespeare, yet "
            f"{_pct(char_base.style_share)} of its samples pass for {name}'s, against "
            f"{_pct(h.false_positive_rate)} of real speeches by others: on text unlike anything "
            "it was trained on (the word salad of a small model) the classifier's verdict is "
            "close to a coin toss. The score means something only once samples read like "
            "Shakespeare at all, as with a real GPT-2 as the base."))
    s.add(Paragraph("Samples (continuations of the same prompts, one per method; the priming "
                    "text itself is not shown):"))
    labels = ["base model", "priming only", char_lora.label, "full fine-tuning", "LoRA + priming"]
    k = p.samples_per_prompt
    for i, char_prompt in enumerate(p.char_prompts[:3]):
        s.add(Columns([f"{label} (“{char_prompt}”)" for label in labels],
                      [char_prompt + m.samples[i * k] for m, _ in order]))

    # ---- experiment 3
    s = r.section(SECTIONS[4])
    s.add(Paragraph(
        f"The seed project's author thought LoRA lacked capacity. Here LoRA on `c_attn` with "
        f"rank {', '.join(map(str, p.ranks))} (alpha = {hp.alpha_per_rank:g} r, so the "
        "update's "
        f"scale is the same), rank {p.wide_rank} on {', '.join(p.wide_targets)} (every "
        "projection of every block), and two changes to experiment 2's LoRA run that the field "
        "proposes where LoRA trails full fine-tuning, each at the same rank, modules and "
        "learning rate: DoRA (Liu et al. 2024: a trainable magnitude per output feature over "
        "the LoRA-updated direction) and LoRA+ (Hayou et al. 2024: B learns "
        f"{p.loraplus_ratio:g} times faster than A). All are trained like experiment 2 and "
        "measured against full fine-tuning."))
    rows = [[run.label, f"{run.trainable_params:,}",
             f"{100 * run.trainable_params / run.total_params:.3f}%",
             _fmt_ppl(run.val_perplexity), f"{run.val_loss:.3f}",
             f"{run.final_train_loss:.3f}", f"{run.train_seconds:.0f} s"]
            for run in [*sweep, wide, *variants, char_full]]
    s.add(Table(["run", "trainable params", "% of model", "held-out perplexity", "held-out loss",
                 "final train loss", "train wall time"], rows))
    s.add(Figure(figures.rank_sweep(
        [(run.lora_rank, run.trainable_params, run.val_perplexity) for run in sweep],
        [(run.label, run.trainable_params, run.val_perplexity) for run in (wide, *variants)],
        char_full.val_perplexity, char_full.trainable_params, char_base.val_perplexity,
        f"{name}'s speeches"),
        "rank_sweep.png", "Held-out perplexity against trainable parameters: LoRA ranks, more "
                          "target modules, DoRA and LoRA+, and full fine-tuning (dashed) as the "
                          "reference."))
    s.add(Paragraph(_capacity_verdict(sweep, best, wide, char_full, char_base.val_loss)))
    s.add(Paragraph(_variants_verdict([(run, char_lora) for run in variants], char_full,
                                      char_base.val_loss)))

    # ---- commands
    s = r.section(SECTIONS[5])
    s.add(Paragraph(
        "Each result above comes from one of these commands (run from the directory the demo ran "
        "in). `builtin:` data names read the train split for `--data` and the test split for "
        "`--val-data` and `gpt2tune eval`. The demo removed the training checkpoints to save "
        "space, so `--resume` does not apply."))
    s.add(Code("\n\n".join(f"# {label}\n{cmd}" for label, cmd in res.commands)))

    # ---- machine
    s = r.section(SECTIONS[6])
    rows = [[k, v] for k, v in res.machine]
    rows.append(["device, precision", f"{res.device}, {res.options.precision}"])
    if res.load_at_start is not None:
        rows.append(["load average at start (1/5/15 min)",
                     " / ".join(f"{x:.2f}" for x in res.load_at_start)])
    s.add(Table(["", ""], rows, numeric=[False, False]))
    s.add(Paragraph("Timings on a shared machine vary with its load; a load average above the "
                    "number of cores means other work was competing for them."))

    # ---- timings
    s = r.section(SECTIONS[7])
    s.add(Table(["stage", "wall time"], [[k, f"{v:.1f} s"] for k, v in res.timings.items()]))
    return r


# ----------------------------------------------------------------------------- gpt2tune compare

COMPARE_SECTIONS = ("Summary", "The base model and hyperparameters", "Methods compared",
                    "LoRA capacity", "Style", "Samples", "Rerun any single result",
                    "Machine and versions", "Timings")
"""The comparison report's sections, in order; "LoRA capacity" appears with two LoRA ranks or
more, or a LoRA run and DoRA or LoRA+; "Style" when samples were scored."""


def build_compare_report(res: CompareResults) -> Report:
    """The report document of a finished ``gpt2tune compare``.

    Args:
        res: the comparison's results.

    Returns:
        The document, its figures (PNG bytes) included.
    """
    exp, b, hp = res.experiment, res.base, res.hyperparams
    methods = exp.methods
    base = next((m for m in methods if m.method == "base"), None)
    best = min(methods, key=lambda m: m.val_loss)
    r = Report(f"gpt2tune compare: {len(methods)} methods on {exp.spec.data}")
    r.intro.append(Paragraph(
        f"Run on {res.finished} with `{b.path}` ({_fmt_params(b.parameters)} parameters). "
        f"{exp.train_docs} training documents; every method is scored on the same "
        f"{exp.test_docs} held-out documents ({methods[0].val_tokens:,} tokens). Every number "
        "comes from the ordinary `gpt2tune train/eval/generate` code paths; the commands are at "
        "the end."))

    s = r.section(COMPARE_SECTIONS[0])
    ranked = sorted(methods, key=lambda m: m.val_loss)
    s.add(Paragraph(
        "Held-out perplexity, best first: " + "; ".join(
            f"{m.label} {_fmt_ppl(m.val_perplexity)}" for m in ranked) + ". "
        + (f"The best, {best.label}, is {base.val_loss - best.val_loss:.3f} nats per token "
           "below the base model." if base and best is not base else "")))
    if exp.style:
        scored = [m for m in exp.sampled if m.style_share is not None]
        s.add(Paragraph(
            "Samples judged to be in your text's style by a classifier (held-out balanced "
            f"accuracy {_pct(exp.style.heldout.accuracy)}; chance 50%): "
            + ", ".join(f"{m.label} {_pct(m.style_share)}" for m in scored) + "."))
    s.add(Figure(figures.perplexities({m.label: m.val_perplexity for m in methods},
                                      "Held-out perplexity (lower is better)"),
                 "perplexity_by_method.png", "Held-out perplexity by method."))

    s = r.section(COMPARE_SECTIONS[1])
    s.add(Paragraph(f"`{b.path}`: {b.parameters:,} parameters, {b.config['n_layer']} layers, "
                    f"width {b.config['n_embd']}, context {b.config['n_positions']}. Why this "
                    f"base: {b.reason or 'given with --base'}."))
    s.add(*_recipe(hp, res.budget_note))

    s = r.section(COMPARE_SECTIONS[2])
    rows = []
    for m in methods:
        trained = m.train_seconds is not None
        rows.append([m.label, m.method, f"{m.trainable_params:,}", _fmt_ppl(m.val_perplexity),
                     f"{m.val_loss:.3f}", f"{m.train_seconds:.0f} s" if trained else "–",
                     f"{m.peak_memory_mib:,.0f} MiB" if trained else "–",
                     _fmt_bytes(m.saved_bytes) if m.saved_bytes else "–",
                     _pct(m.style_share) if m.style_share is not None else "–"])
    s.add(Table(["method", "kind", "trainable params", "held-out perplexity", "loss (nats)",
                 "train time", "peak RSS", "saved", "in style"], rows))
    if exp.prime:
        s.add(Paragraph(f"Priming places {exp.spec.prime_speeches} training documents "
                        f"({exp.prime.tokens} tokens, in `{exp.prime.file}`) before the prompt "
                        "and before each held-out document; only the document's own tokens are "
                        "scored, the same tokens as without priming."))
    curves = [(m.label, m.history) for m in methods if m.history]
    if curves:
        s.add(Figure(figures.loss_curves([("Training runs", curves)]), "loss_curves.png",
                     "Training loss (thin, smoothed) and held-out loss (markers) per run."))

    lora = sorted((m for m in methods if m.method == "lora" and m.lora_targets == ("c_attn",)),
                  key=lambda m: m.lora_rank)
    variants = [m for m in methods if m.method in LORA_VARIANTS]
    if len(lora) >= 2 or (lora and variants):
        s = r.section(COMPARE_SECTIONS[3])
        full = next((m for m in methods if m.method == "full"), None)
        wide = next((m for m in methods if m.method == "lora" and m.lora_targets != ("c_attn",)),
                    None)
        s.add(Figure(figures.rank_sweep(
            [(m.lora_rank, m.trainable_params, m.val_perplexity) for m in lora],
            [(m.label, m.trainable_params, m.val_perplexity) for m in ([wide] if wide else [])
             + variants],
            full.val_perplexity if full else None, full.trainable_params if full else None,
            base.val_perplexity if base else None, "your text"),
            "rank_sweep.png", "Held-out perplexity against trainable parameters."))
        if len(lora) >= 2 and full and base and wide:
            best_lora = min(lora, key=lambda m: m.val_loss)
            s.add(Paragraph(_capacity_verdict(lora, best_lora, wide, full, base.val_loss)))
        elif len(lora) >= 2:
            s.add(Paragraph(
                f"From r={lora[0].lora_rank} to r={lora[-1].lora_rank} the held-out loss changes "
                f"by {lora[-1].val_loss - lora[0].val_loss:+.3f} nats."))
        if variants and base:
            # each variant beside the plain LoRA run of its rank and modules, if there is one
            pairs = [(v, next((m for m in methods if m.method == "lora"
                               and (m.lora_rank, m.lora_targets) == (v.lora_rank, v.lora_targets)),
                              None)) for v in variants]
            s.add(Paragraph(_variants_verdict(pairs, full, base.val_loss)))

    if exp.style:
        s = r.section(COMPARE_SECTIONS[4])
        h = exp.style.heldout
        s.add(Paragraph(
            f"A classifier (TF-IDF of character 2–5-grams, logistic regression) learned "
            f"{exp.style.train_sizes[0]} of your training documents against "
            f"{exp.style.train_sizes[1]} contrast texts ({res.options.contrast or 'built-in text'}"
            f"). On texts it never saw its balanced accuracy is **{_pct(h.accuracy)}** (chance "
            f"50%): it takes {_pct(h.in_character_rate)} of {h.positives} held-out documents and "
            f"{_pct(h.false_positive_rate)} of {h.negatives} contrast texts for yours. Read the "
            "scores below against those two rates."))
        s.add(Figure(figures.style_scores(
            {m.label: m.style_share for m in exp.sampled}, h.in_character_rate,
            h.false_positive_rate, "your text", real_label="your held-out documents",
            other_label="contrast texts"),
            "style_scores.png", "Share of samples the classifier takes for your text's."))

    s = r.section(COMPARE_SECTIONS[5])
    k = exp.spec.samples_per_prompt
    for i, prompt in enumerate(exp.spec.prompts):
        s.add(Columns([f"{m.label} (“{prompt}”)" for m in exp.sampled],
                      [prompt + m.samples[i * k] for m in exp.sampled]))

    s = r.section(COMPARE_SECTIONS[6])
    s.add(Code("\n\n".join(f"# {label}\n{cmd}" for label, cmd in exp.commands)))
    s = r.section(COMPARE_SECTIONS[7])
    s.add(Table(["", ""], [[k, v] for k, v in res.machine]
                + [["device, precision", f"{res.device}, {res.options.precision}"]],
                numeric=[False, False]))
    s = r.section(COMPARE_SECTIONS[8])
    s.add(Table(["stage", "wall time"], [[k, f"{v:.1f} s"] for k, v in exp.timings.items()]))
    return r
