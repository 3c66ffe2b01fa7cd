"""Serving throughput and latency of `gpt2tune serve`: concurrent streaming clients, one LoRA
adapter each, through the official openai client.

The base (random weights, GPT-2 124M architecture by default) and 8 peft adapters (r=8 on
``c_attn``, random B so each changes the tokens) are built in a temporary directory; one server
process serves them all with ``--max-batch 8``. For each concurrency level c, c threads start
together (a barrier) and each streams one completion of ``--tokens`` tokens from its own adapter
(client i: model ``a{i}``, its own prompt and seed, temperature 1). One streamed chunk is one
token (the server sends a chunk per generated token, even when its text is held back).

    python benchmarks/serve.py                         # GPT-2 124M, 128 tokens, 1/4/8 clients
    python benchmarks/serve.py --size mini --tokens 32 # quick run
    python benchmarks/serve.py --repeats 3 --out benchmarks/serve.json

Per level: aggregate tokens/s = all clients' tokens / (the last client's end - the common start);
time to first token (TTFT) per client from the common start; inter-token latency (ITL) = the gaps
between a client's consecutive chunks, pooled over clients. With ``--repeats`` > 1 the throughput
is the best repeat (as in benchmarks/run.py) and the latencies are pooled over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# benchmarks/run.py's machine record and shared-machine checks (a script's own folder is on
# sys.path, so this works from any working directory)
from run import _cpu_busy_s, machine_info, wait_for_quiet

ADAPTERS = 8
LORA_R, LORA_ALPHA = 8, 16
SIZES = {
    "gpt2": {},  # GPT2Config()'s defaults: 12 layers, 12 heads, 768 wide (124M)
    "mini": {"n_layer": 6, "n_head": 6, "n_embd": 384},
}
PROMPTS = [
    "The history of the city begins",
    "In a small village by the sea",
    "The recipe calls for two cups of",
    "Scientists announced on Tuesday that",
    "Once upon a time there was a",
    "The main advantage of this method is",
    "She opened the letter and read",
    "The quarterly report shows that",
]
STARTUP_S = 180
TARGET_CLIENTS, TARGET_SPEEDUP = 8, 3.0


# ----------------------------------------------------------------------------- the models


def build_models(root: Path, size: str) -> tuple[Path, dict[str, Path]]:
    """Save a random base and ``ADAPTERS`` random peft adapters under ``root``.

    Returns:
        The base directory and adapter name -> directory.
    """
    import copy
    import warnings

    import peft
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = root / f"base-{size}"
    model = GPT2LMHeadModel(GPT2Config(**SIZES[size]))
    model.save_pretrained(base)
    adapters = {}
    for i in range(ADAPTERS):
        torch.manual_seed(100 + i)
        # init_lora_weights=False: B is random too, so each adapter gives other tokens
        with warnings.catch_warnings():
            # peft calls a transformers API that is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = peft.get_peft_model(
                copy.deepcopy(model),
                peft.LoraConfig(
                    r=LORA_R,
                    lora_alpha=LORA_ALPHA,
                    target_modules=["c_attn"],
                    fan_in_fan_out=True,
                    init_lora_weights=False,
                    lora_dropout=0.0,
                ),
            )
        adapters[f"a{i}"] = root / f"a{i}"
        peft_model.save_pretrained(adapters[f"a{i}"])
    return base, adapters


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    base: Path,
    adapters: dict[str, Path],
    port: int,
    device: str,
    log: Path,
    precision: str = "auto",
    extra: tuple[str, ...] = (),
) -> subprocess.Popen:
    """Start `gpt2tune serve` on 127.0.0.1:``port`` and wait (at most STARTUP_S) for /health."""
    argv = [
        sys.executable,
        "-m",
        "gpt2tune",
        "serve",
        "--model",
        str(base),
        *(a for name, d in adapters.items() for a in ("--adapter", f"{name}={d}")),
        "--max-batch",
        str(ADAPTERS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        device,
        "--precision",
        precision,
        *extra,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            health(port)
            return proc
        except OSError:
            time.sleep(0.25)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer /health in {STARTUP_S} s:\n{log.read_text()}")


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        return json.loads(r.read())


def stop_server(proc: subprocess.Popen) -> bool:
    """SIGTERM (running requests finish), then SIGKILL if it has not exited after 30 s.
    Returns whether it stopped cleanly."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        # uvicorn re-raises SIGTERM once it has shut down, so -SIGTERM is a clean exit too
        return proc.wait(30) in (0, -signal.SIGTERM)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # fields after the command name, which is in parentheses and may contain spaces
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ----------------------------------------------------------------------------- the clients


def stream_one(base_url: str, i: int, tokens: int, barrier: threading.Barrier) -> dict:
    """Client i: wait at the barrier, then stream one completion from adapter a{i}.

    Returns chunk arrival times (perf_counter, one per token), the server's token count (usage)
    and the finish reason.
    """
    import openai

    try:
        client = openai.OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=600)
        barrier.wait()
    except BaseException:
        barrier.abort()  # the other clients stop waiting for this one
        raise
    with client:
        stream = client.completions.create(
            model=f"a{i}",
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=tokens,
            temperature=1.0,
            seed=i,
            stream=True,
            stream_options={"include_usage": True},
        )
        arrivals, usage, finish = [], None, None
        for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                arrivals.append(now)
                finish = choice.finish_reason or finish
    if not arrivals:
        raise RuntimeError(f"client {i} (adapter a{i}) received no tokens")
    return {"arrivals": arrivals, "usage_tokens": usage, "finish": finish}


def run_level(base_url: str, clients: int, tokens: int) -> dict:
    """``clients`` streams at once; their raw timings and the aggregate figures."""
    start: list[float] = []
    # the barrier's action runs once, as the last thread arrives: the common start
    barrier = threading.Barrier(clients, action=lambda: start.append(time.perf_counter()))
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(stream_one, base_url, i, tokens, barrier) for i in range(clients)]
        results = [f.result() for f in futures]
    t0 = start[0]
    end = max(r["arrivals"][-1] for r in results)
    produced = sum(len(r["arrivals"]) for r in results)
    return {
        "wall_s": end - t0,
        "tokens": produced,
        "tokens_per_s": produced / (end - t0),
        "ttft_ms": [(r["arrivals"][0] - t0) * 1e3 for r in results],
        "itl_ms": [
            (b - a) * 1e3 for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:])
        ],
        "usage_tokens": [r["usage_tokens"] for r in results],
        # the server's own count: checks that one chunk is one token
        "chunks_match_usage": all(len(r["arrivals"]) == r["usage_tokens"] for r in results),
        "finish": [r["finish"] for r in results],
    }


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linearly interpolated between the closest ranks."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ----------------------------------------------------------------------------- the report


def summarize(clients: int, runs: list[dict]) -> dict:
    best = max(runs, key=lambda r: r["tokens_per_s"])
    ttft = [v for r in runs for v in r["ttft_ms"]]
    itl = [v for r in runs for v in r["itl_ms"]]
    return {
        "clients": clients,
        "tokens": best["tokens"],
        "wall_s": round(best["wall_s"], 2),
        "tokens_per_s": round(best["tokens_per_s"], 1),
        "ttft_p50_ms": round(percentile(ttft, 50), 1),
        "ttft_p95_ms": round(percentile(ttft, 95), 1),
        "itl_p50_ms": round(percentile(itl, 50), 1),
        "itl_p95_ms": round(percentile(itl, 95), 1),
        "finish": sorted({f for r in runs for f in r["finish"]}),
        "server_cores": best.get("server_cores"),
        "client_cores": best.get("client_cores"),
        "others_cores": best.get("others_cores"),
        "peak_batch": best.get("peak_batch"),
    }


def format_table(levels: list[dict]) -> str:
    cols = [
        "clients",
        "tokens",
        "wall s",
        "aggregate tokens/s",
        "speedup vs 1",
        "TTFT p50 / p95 ms",
        "ITL p50 / p95 ms",
        "server / client cores",
    ]
    base = next((lv["tokens_per_s"] for lv in levels if lv["clients"] == 1), None)
    rows = []
    for lv in levels:
        speedup = f"{lv['tokens_per_s'] / base:.2f}x" if base else "-"
        cores = (
            f"{lv['server_cores']:.2f} / {lv['client_cores']:.2f}"
            if lv["server_cores"] is not None
            else "-"
        )
        rows.append(
            [
                str(lv["clients"]),
                str(lv["tokens"]),
                f"{lv['wall_s']:.1f}",
                f"{lv['tokens_per_s']:.1f}",
                speedup,
                f"{lv['ttft_p50_ms']:.0f} / {lv['ttft_p95_ms']:.0f}",
                f"{lv['itl_p50_ms']:.0f} / {lv['itl_p95_ms']:.0f}",
                cores,
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"

    return "\n".join(
        [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)]
    )


def verdict(levels: list[dict]) -> dict:
    """The target: 8 clients on different adapters >= 3x the aggregate tokens/s of 1 client."""
    by = {lv["clients"]: lv["tokens_per_s"] for lv in levels}
    text = (
        f"{TARGET_CLIENTS} clients on different adapters >= {TARGET_SPEEDUP:g}x the aggregate "
        "tokens/s of 1 client"
    )
    if 1 not in by or TARGET_CLIENTS not in by:
        return {"target": text, "speedup": None, "met": None}
    speedup = by[TARGET_CLIENTS] / by[1]
    return {"target": text, "speedup": round(speedup, 2), "met": speedup >= TARGET_SPEEDUP}


# ----------------------------------------------------------------------------- shared prime

PRIME_TOKENS, PRIME_REQUESTS = 700, 8


def prime_text(tokens: int) -> str:
    """About ``tokens`` tokens of plain English (GPT-2's tokenizer), cut at a word."""
    from gpt2tune.core.tokenizer import Tokenizer

    tok = Tokenizer()
    text, words = "", " ".join(PROMPTS * 40).split()
    for i in range(len(words)):
        if len(tok.encode(" ".join(words[: i + 1]))) > tokens:
            break
        text = " ".join(words[: i + 1])
    return text


def prime_ttft(base_url: str, prime: str) -> list[float]:
    """Seconds to the first streamed token of ``PRIME_REQUESTS`` requests sent one after the
    other, each with ``prime`` and its own prompt (greedy, 1 token, the base model)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="-", max_retries=0)
    model = client.models.list().data[0].id
    out = []
    for i in range(PRIME_REQUESTS):
        t = time.perf_counter()
        stream = client.completions.create(
            model=model,
            prompt=PROMPTS[i],
            max_tokens=1,
            temperature=0,
            stream=True,
            extra_body={"prime": prime},
        )
        first = None
        for _ in stream:
            first = first or time.perf_counter() - t
        out.append(first)
    return out


def run_prime(args) -> int:
    """The --prime mode: TTFT of a shared 700-token prime without and with the prefix cache."""
    with tempfile.TemporaryDirectory(prefix="gpt2tune-serve-bench-") as tmp:
        root = Path(tmp)
        base, _ = build_models(root, args.size)
        prime = prime_text(PRIME_TOKENS)
        rows = {}
        for label, extra in (
            ("--prefix-cache-mb 0", ("--prefix-cache-mb", "0")),
            ("default (256 MiB)", ()),
        ):
            port = free_port()
            proc = start_server(
                base, {}, port, args.device, root / "serve.log", args.precision, extra
            )
            try:
                base_url = f"http://127.0.0.1:{port}/v1"
                prime_ttft(base_url, prime[:200])  # warm-up with another prime
                wait_for_quiet(args.quiet_wait)
                rows[label] = (prime_ttft(base_url, prime), health(port).get("prefix_cache"))
            finally:
                stop_server(proc)
    print(
        f"TTFT of {PRIME_REQUESTS} requests sent one after the other, each a {PRIME_TOKENS}-"
        f"token prime + its own prompt (model {args.size}, --precision {args.precision}):"
    )
    print("| server | 1st request (ms) | requests 2-8, median (ms) | mean of all 8 (ms) |")
    print("|---|---:|---:|---:|")
    for label, (ttft, _) in rows.items():
        rest = sorted(ttft[1:])[len(ttft[1:]) // 2]
        print(
            f"| {label} | {ttft[0] * 1e3:.0f} | {rest * 1e3:.0f} | "
            f"{sum(ttft) / len(ttft) * 1e3:.0f} |"
        )
    for label, (ttft, stats) in rows.items():
        print(f"{label}: TTFT ms {[round(t * 1e3) for t in ttft]}; /health prefix_cache {stats}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="gpt2",
        help="gpt2: the 124M architecture (default); mini: 6 layers x 384, quick",
    )
    ap.add_argument("--tokens", type=int, default=128, help="tokens per completion (default 128)")
    ap.add_argument(
        "--clients",
        default="1,4,8",
        help=f"comma-separated concurrency levels, each 1..{ADAPTERS} (default 1,4,8)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per level (default 1)")
    ap.add_argument("--port", type=int, help="the server's port (default: a free one)")
    ap.add_argument("--device", default="auto", help="the server's --device (default auto)")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="the server's --precision (default auto, the server's own default: "
        "bf16 where the CPU has it natively)",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        metavar="SECONDS",
        help="before each level, wait up to this long for other processes to leave "
        "the CPU (default 60; 0 = don't wait)",
    )
    ap.add_argument("--out", type=Path, help="write the results to this JSON file")
    ap.add_argument(
        "--prime",
        action="store_true",
        help=f"instead: time to first token of {PRIME_REQUESTS} requests sharing a "
        f"{PRIME_TOKENS}-token prime, --prefix-cache-mb 0 against the default",
    )
    args = ap.parse_args(argv)
    if args.prime:
        return run_prime(args)
    levels = [int(c) for c in args.clients.split(",") if c]
    if not levels or not all(1 <= c <= ADAPTERS for c in levels):
        ap.error(f"--clients takes levels between 1 and {ADAPTERS}, e.g. 1,4,8")
    if args.tokens < 1 or args.repeats < 1:
        ap.error("--tokens and --repeats must be >= 1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    from gpt2tune.runtime import resolve_device

    machine = machine_info(str(resolve_device(args.device)))
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, bf16 flags: "
        f"{', '.join(machine['bf16_flags']) or 'none'}; torch {machine['torch']}",
        flush=True,
    )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpt2tune-serve-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        base, adapters = build_models(root, args.size)
        print(
            f"built {args.size} base + {len(adapters)} adapters in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        port = args.port or free_port()
        log = root / "serve.log"
        t = time.perf_counter()
        proc = start_server(base, adapters, port, args.device, log, args.precision)
        server_start_s = time.perf_counter() - t
        print(f"server up on port {port} in {server_start_s:.1f} s", flush=True)
        base_url = f"http://127.0.0.1:{port}/v1"
        summaries, raw = [], {}
        try:
            run_level(base_url, 1, min(8, args.tokens))  # warm-up, not measured
            for c in levels:
                raw[c] = []
                for _ in range(args.repeats):
                    wait_for_quiet(args.quiet_wait)
                    busy0, own0, srv0 = _cpu_busy_s(), own_cpu_s(), process_cpu_s(proc.pid)
                    res = run_level(base_url, c, args.tokens)
                    busy1, own1, srv1 = _cpu_busy_s(), own_cpu_s(), process_cpu_s(proc.pid)
                    if srv0 is not None and srv1 is not None:
                        res["server_cores"] = round((srv1 - srv0) / res["wall_s"], 2)
                        res["client_cores"] = round((own1 - own0) / res["wall_s"], 2)
                        if busy0 is not None and busy1 is not None:
                            res["others_cores"] = round(
                                max(0.0, (busy1 - busy0) - (srv1 - srv0) - (own1 - own0))
                                / res["wall_s"],
                                2,
                            )
                    res["peak_batch"] = health(port)["peak_batch"]
                    raw[c].append(res)
                    print(
                        f"{c} clients: {res['tokens']} tokens in {res['wall_s']:.2f} s, "
                        f"{res['tokens_per_s']:.1f} tokens/s, server "
                        f"{res.get('server_cores')} cores, others {res.get('others_cores')} "
                        f"cores",
                        flush=True,
                    )
                summaries.append(summarize(c, raw[c]))
        finally:
            clean = stop_server(proc)
        server_log = log.read_text()
    if not clean:
        print(
            f"the server did not stop cleanly (exit {proc.returncode}):\n{server_log}",
            file=sys.stderr,
        )

    result = verdict(summaries)
    expected = [c * args.tokens for c in levels]
    short = [
        f"{lv['clients']} clients: {lv['tokens']} of {e}"
        for lv, e in zip(summaries, expected)
        if lv["tokens"] != e
    ]
    print()
    flags = ", ".join(machine["bf16_flags"]) or "none"
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine.get('gpu') or 'CPU'}; "
        f"bf16 flags: {flags}; torch {machine['torch']}, gpt2tune {machine['gpt2tune']}"
    )
    print(
        f"model: {args.size} (random weights), {ADAPTERS} LoRA adapters r={LORA_R} on c_attn, "
        f"--max-batch {ADAPTERS}, --precision {args.precision}, {args.tokens} tokens per "
        "client, temperature 1"
    )
    print()
    print(format_table(summaries))
    print()
    if short:
        print("fewer tokens than asked (end of text sampled): " + "; ".join(short))
    if not all(r["chunks_match_usage"] for runs in raw.values() for r in runs):
        print(
            "the streamed chunks did not match the server's token counts (usage): the token "
            "counts above are chunk counts"
        )
    met = {True: "met", False: "NOT met", None: "not measured"}[result["met"]]
    figure = f" ({result['speedup']:.2f}x)" if result["speedup"] is not None else ""
    print(f"target: {result['target']}: {met}{figure}")
    print(f"wall time of the benchmark: {time.perf_counter() - t_start:.0f} s")
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "loadavg_end": [round(v, 2) for v in os.getloadavg()],
                    "settings": {
                        "size": args.size,
                        "tokens": args.tokens,
                        "clients": levels,
                        "repeats": args.repeats,
                        "adapters": ADAPTERS,
                        "lora_r": LORA_R,
                        "lora_alpha": LORA_ALPHA,
                        "max_batch": ADAPTERS,
                        "device": args.device,
                        "precision": args.precision,
                        "temperature": 1.0,
                    },
                    "server_start_s": round(server_start_s, 1),
                    "levels": summaries,
                    **result,
                    "raw": raw,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {args.out}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
