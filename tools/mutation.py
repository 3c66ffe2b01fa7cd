"""Mutation testing of gpt2tune's packages with mutmut: the mutation score per package.

    python tools/mutation.py                  # every package below (make mutants)
    python tools/mutation.py core serve       # some of them
    python tools/mutation.py --survivors core # list what survived in core's last run

mutmut (``[tool.mutmut]`` in pyproject.toml) plants one small bug at a time (an operator, a
constant, a string, a removed argument) in a copy of the code and runs the tests that reach the
mutated function; a mutant no test notices "survived". Each package is run in its own copy of the
repository under ``.mutants/PACKAGE``, against the tests that speak for it (``PACKAGES``): a
package's score says what its own tests catch. mutmut keeps its results there, so a second run
goes on where the last one stopped.

The score is caught / mutants checked, where caught is killed (a test failed) or timed out (the
tests hang: they would never pass); a mutant that no test reaches ("no tests") counts as a
survivor, so the score does not flatter. With ``--max-minutes`` a package stops early and the
table says how many of its mutants were checked.

Writes ``.mutants/scores.json`` and prints the table the README's testing section shows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutants"

PACKAGES = {  # package: the tests that speak for it
    # the KV cache and per-row adapters are held by the engine's tests, the loaders' use of the
    # model by the checkpoint tests
    "core": ["tests/core", "tests/test_layers.py", "tests/inference/test_engine.py",
             "tests/inference/test_generate.py", "tests/formats/test_hf.py"],
    "formats": ["tests/formats"],
    "inference": ["tests/inference", "tests/cli/test_cli.py"],
    "finetune": ["tests/finetune"],
    "serve": ["tests/serve"],
}
KILLED = {"killed", "timeout"}  # a mutant that makes the tests hang is caught: they never pass
STATUSES = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped",
            "segfault", "check was interrupted by user", "not checked")


def copy_repo(dest: Path) -> None:
    """The tracked files (and any new, not ignored ones) of the working tree, into ``dest``;
    mutmut's own ``dest/mutants`` cache is kept."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src, dst = ROOT / name, dest / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists() or dst.read_bytes() != src.read_bytes():
                shutil.copy2(src, dst)


def configure(dest: Path, package: str) -> None:
    """The copy's pyproject.toml with mutmut set to this package and its tests."""
    text = (dest / "pyproject.toml").read_text()
    tests = json.dumps(PACKAGES[package])
    text = re.sub(r"(?m)^only_mutate = .*$", f'only_mutate = ["src/gpt2tune/{package}/*"]', text)
    text = re.sub(r"(?m)^pytest_add_cli_args_test_selection = .*$",
                  f"pytest_add_cli_args_test_selection = {tests}", text)
    (dest / "pyproject.toml").write_text(text)


def results(dest: Path) -> dict[str, str]:
    """mutant name -> status, from mutmut's last run in ``dest``."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=dest,
                         capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and status in STATUSES:
            found[name] = status
    return found


def mutmut(dest: Path, names: list[str], children: int, max_minutes: float | None) -> int:
    """``mutmut run [NAMES]`` in ``dest``; its exit code (0 when stopped by the time limit)."""
    # subprocesses the tests start (python -m gpt2tune, torchrun) import the mutated copy too;
    # the folder must exist before mutmut starts, or Python caches it as absent and every import
    # of gpt2tune, the tests' included, finds the unmutated code
    (dest / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(dest / "mutants" / "src")}
    with (dest / "mutmut.log").open("w") as log:  # its progress line, and what went wrong
        # a session of its own, so that mutmut, its fork server and its workers stop together
        proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children",
                                 str(children), *names], cwd=dest, env=env, stdout=log,
                                stderr=log, start_new_session=True)
        try:
            return proc.wait(None if max_minutes is None else max_minutes * 60)
        except subprocess.TimeoutExpired:  # out of time: what was checked stays cached
            os.killpg(proc.pid, signal.SIGKILL)  # (mutmut goes on after a SIGINT)
            proc.wait()
            return 0


def run_package(package: str, children: int, max_minutes: float | None,
                sample: int | None, seed: int) -> dict:
    dest = WORK / package
    copy_repo(dest)
    configure(dest, package)
    start = time.monotonic()
    names: list[str] = []
    run = max_minutes != 0  # 0: score what the last runs left, run nothing
    if sample:  # generate the mutants and the test map only, then check a seeded sample
        if run:  # (mutmut stops with an error at the unknown name, after both)
            mutmut(dest, ["no-such-mutant"], children, None)
        every = sorted(results(dest))
        names = sorted(random.Random(seed).sample(every, min(sample, len(every))))
    code = mutmut(dest, names, children, max_minutes) if run else 0
    if code:
        tail = (dest / "mutmut.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"mutmut failed on {package} (exit {code}); the end of "
                         f"{dest / 'mutmut.log'}:\n{tail}")
    statuses = results(dest)
    total = len(statuses)
    if names:
        statuses = {n: statuses[n] for n in names}
    counts = {s: sum(1 for v in statuses.values() if v == s) for s in STATUSES}
    unchecked = counts["not checked"] + counts["check was interrupted by user"]
    return {"package": package, "mutants": total, "checked": len(statuses) - unchecked,
            "sampled": bool(names), "counts": {k: v for k, v in counts.items() if v},
            "tests": PACKAGES[package], "minutes": round((time.monotonic() - start) / 60, 1)}


def caught(r: dict) -> tuple[int, float]:
    """A package's caught mutants and its score (caught / checked)."""
    n = sum(r["counts"].get(s, 0) for s in KILLED)
    return n, n / max(1, r.get("checked", r["mutants"]))


def table(rows: list[dict]) -> str:
    """The README's table; a sampled score comes with its 95% interval."""
    lines = ["| package | mutants | checked | caught | score | survived | no tests | timeout | "
             "tests run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, n = r["counts"], r.get("checked", r["mutants"])
        hits, p = caught(r)
        score = f"{p:.0%}"
        if r.get("sampled"):
            score += f" ± {1.96 * (p * (1 - p) / max(1, n)) ** 0.5:.0%}"
        lines.append(f"| {r['package']} | {r['mutants']} | {n} | {hits} | {score} | "
                     f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {c.get('timeout', 0)} | "
                     f"{', '.join('`' + t + '`' for t in r['tests'])} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("packages", nargs="*", metavar="PACKAGE",
                   help=f"packages to run: {', '.join(PACKAGES)} (default: all)")
    p.add_argument("--children", type=int, default=os.cpu_count() or 1,
                   help="mutants tested at once (default: the CPU count)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop each package after this long; what was checked is scored (and "
                        "cached: the next run goes on from there); 0: only score the cache")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="check N mutants per package drawn at random (seeded) instead of all")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument("--table", action="store_true",
                   help="print the table of the last runs (.mutants/scores.json) and stop")
    p.add_argument("--survivors", action="store_true",
                   help="list the surviving mutants of the last run instead of running")
    args = p.parse_args()
    packages = args.packages or list(PACKAGES)
    unknown = sorted(set(packages) - set(PACKAGES))
    if unknown:
        p.error(f"unknown package {unknown[0]!r}; choose from {', '.join(PACKAGES)}")
    if args.survivors:
        for package in packages:
            for name, status in results(WORK / package).items():
                if status not in KILLED:
                    print(f"{package}\t{status}\t{name}")
        return 0
    scores_file = WORK / "scores.json"
    scores = json.loads(scores_file.read_text()) if scores_file.exists() else {}
    if args.table:
        print(table([scores[p] for p in PACKAGES if p in scores]))
        return 0
    for package in packages:
        print(f"mutating {package} against {' '.join(PACKAGES[package])} ...", flush=True)
        r = run_package(package, args.children, args.max_minutes, args.sample, args.seed)
        scores[package] = r
        print(f"  {caught(r)[1]:.1%} caught of {r['checked']} checked ({r['mutants']} mutants) "
              f"in {r['minutes']} min", flush=True)
        scores_file.write_text(json.dumps(scores, indent=1) + "\n")
    print(table([scores[p] for p in PACKAGES if p in scores]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
