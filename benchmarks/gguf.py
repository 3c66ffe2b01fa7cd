"""Generation speed of an exported GPT-2 124M in llama.cpp (llama-cpp-python) beside
`gpt2tune generate`'s engine, batch 1, on this machine: which runtime to pick, by numbers.

The model is GPT-2 124M's architecture with random weights (transformers' ``GPT2Config()``),
saved with GPT-2's vocabulary files and exported with ``gpt2tune export`` as f16 and q8_0.
Each runtime generates ``--tokens`` new tokens after a 16-token prompt, sampling with top-k 40,
``<|endoftext|>`` banned so every run makes all its tokens; one warm-up run, then the fastest of
``--repeats``. Threads: ``--threads`` (default: the machine's cores) in every runtime.

    python benchmarks/gguf.py                    # 128 tokens, 3 repeats
    python benchmarks/gguf.py --tokens 32 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The history of the city begins in the early years of the nineteenth century, when"


def build(work: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2tune.core.tokenizer import bundled_vocab_files

    torch.manual_seed(0)
    model_dir = work / "gpt2-124m"
    GPT2LMHeadModel(GPT2Config()).save_pretrained(model_dir)
    for f in bundled_vocab_files():
        shutil.copyfile(f, model_dir / f.name)
    return model_dir


def time_llama(path: Path, ids: list[int], tokens: int, repeats: int, threads: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_threads=threads, verbose=False)

    def run(n: int) -> float:
        llm.reset()
        t0 = time.perf_counter()
        ban = llama_cpp.LogitsProcessorList([_ban_eot])
        for made, _ in enumerate(llm.generate(ids, top_k=40, temp=1.0, logits_processor=ban)):
            if made + 1 == n:
                break
        return time.perf_counter() - t0

    run(4)
    return tokens / min(run(tokens) for _ in range(repeats))


def _ban_eot(_ids, scores):
    scores[50256] = -float("inf")
    return scores


def time_gpt2tune(model_dir: Path, ids: list[int], tokens: int, repeats: int, precision: str):
    import torch

    from gpt2tune.core.model import cast_for_inference
    from gpt2tune.formats.hf import load_model
    from gpt2tune.inference.generate import SamplingConfig, generate_ids

    model = load_model(model_dir)
    amp = torch.bfloat16 if precision == "bf16" else None
    if amp is not None:
        cast_for_inference(model, amp)

    def run(n: int) -> float:
        cfg = SamplingConfig(max_new_tokens=n, top_k=40, stop_at_eot=False, seed=0)
        t0 = time.perf_counter()
        generate_ids(model, [ids], cfg, eot_id=50256, autocast_dtype=amp)
        return time.perf_counter() - t0

    run(4)
    return tokens / min(run(tokens) for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()

    import torch

    from gpt2tune.core.tokenizer import Tokenizer

    torch.set_num_threads(args.threads)
    ids = Tokenizer().encode(PROMPT)[:16]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build(work)
        for dtype in ("f16", "q8_0"):
            out = work / f"gpt2-{dtype}.gguf"
            cmd = [sys.executable, "-m", "gpt2tune", "export", "--model", str(model_dir)]
            subprocess.run([*cmd, "--out", str(out), "--dtype", dtype], check=True)
            rows[f"llama.cpp {dtype}"] = time_llama(
                out, ids, args.tokens, args.repeats, args.threads
            )
        for precision in ("fp32", "bf16"):
            rows[f"gpt2tune {precision}"] = time_gpt2tune(
                model_dir, ids, args.tokens, args.repeats, precision
            )
    print(f"GPT-2 124M (random weights), batch 1, {args.tokens} new tokens, {args.threads} threads")
    for name, tps in rows.items():
        print(f"  {name:<18} {tps:8.1f} tokens/s")
    if args.out:
        Path(args.out).write_text(json.dumps({"tokens_per_s": rows, **vars(args)}, indent=2))


if __name__ == "__main__":
    main()
