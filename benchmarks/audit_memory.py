"""Peak resident memory of `memaudit` against corpus size, on the `tiny` model.

    OMP_NUM_THREADS=1 python benchmarks/audit_memory.py                      # 10k, 100k, 1M target tokens
    OMP_NUM_THREADS=1 python benchmarks/audit_memory.py --tokens 10000,100000
    python benchmarks/audit_memory.py --reports none                          # the scoring pass alone
    python benchmarks/audit_memory.py --reports json --tokens 1000000         # one report's share

Trains one tiny adapter (memft, 1 step) once, builds corpora of random-word records (about 100
target tokens each; tiny's tokenizer is byte-level) with at least N target tokens, then runs
`memaudit ADAPTER --corpus C --quiet --json --markdown --html --junit` (or the --reports given) as a
separate process under /usr/bin/time and prints its max RSS. The floor row is the same command on a one-record corpus:
imports, the model and the adapter, so "above floor" is what the corpus itself costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "ben", "dor", "gal", "pex", "qui", "zar")


def build_corpus(path: Path, tokens: int, seed: int = 0) -> tuple[int, int]:
    """Records until ≥ ``tokens`` target tokens (tiny: one token per UTF-8 byte); (records, tokens)."""
    rng = random.Random(seed)
    total = n = 0
    with open(path, "w", encoding="utf-8") as f:
        while total < tokens:
            words = " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(20))
            completion = " " + words[:99]
            f.write(json.dumps({"prompt": f"Entry {n}:", "completion": completion}) + "\n")
            total += len(completion.encode())
            n += 1
    return n, total


def bin_of(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def peak(cmd: list[str], log: Path) -> tuple[float, int, int]:
    """(seconds, max RSS in MiB, exit code) of ``cmd`` under /usr/bin/time."""
    tf = log.with_suffix(".time")
    rc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(tf), *cmd], stdout=open(log, "w"),
                        stderr=subprocess.STDOUT).returncode
    secs, kb = tf.read_text().split()[-2:]
    return float(secs), int(kb) // 1024, rc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="10000,100000,1000000")
    ap.add_argument("--reports", default="json,markdown,html,junit",
                    help="comma-separated reports to write, or none (the scoring pass alone)")
    ap.add_argument("--keep", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="memlaw-auditmem-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        small = work / "small.jsonl"
        build_corpus(small, 1)
        adapter = work / "adapter"
        if not adapter.exists():
            subprocess.run([bin_of("memft"), "train", str(small), "--model", "tiny", "--rank", "8",
                            "--max-steps", "1", "--out", str(adapter), "--quiet"], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        sizes = [("floor", 1)] + [(f"{int(t):,}", int(t)) for t in args.tokens.split(",")]
        print(f"{'target tokens':>14} {'records':>8} {'seconds':>8} {'peak RSS':>9} {'above floor':>12}")
        floor = None
        for label, n_tok in sizes:
            corpus = work / f"c{n_tok}.jsonl"
            n_rec, total = build_corpus(corpus, n_tok)
            out = work / f"r{n_tok}"
            out.mkdir(exist_ok=True)
            for old in out.glob("a.*"):
                old.unlink()
            cmd = [bin_of("memaudit"), str(adapter), "--corpus", str(corpus), "--quiet"]
            suffix = {"json": "json", "markdown": "md", "html": "html", "junit": "xml"}
            for rep in (r for r in args.reports.split(",") if r in suffix):
                cmd += [f"--{rep}", str(out / f"a.{suffix[rep]}")]
            secs, mib, rc = peak(cmd, out / "log.txt")
            if rc not in (0, 1):
                sys.exit(f"memaudit failed (exit {rc}), see {out / 'log.txt'}:\n{(out / 'log.txt').read_text()[-2000:]}")
            floor = mib if floor is None else floor
            sizes_mb = ", ".join(f"{p.suffix[1:]} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(out.glob("a.*")))
            print(f"{total if n_tok > 1 else 'floor':>14} {n_rec:>8} {secs:>8.1f} {mib:>5} MiB {mib - floor:>8} MiB"
                  + (f"   ({sizes_mb})" if sizes_mb else ""), flush=True)


if __name__ == "__main__":
    main()
