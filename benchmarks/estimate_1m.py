"""Time `memplan estimate` on a ~1,000,000-target-token corpus, cold and cached.

    python benchmarks/estimate_1m.py                       # SmolLM2-135M and its shipped card
    python benchmarks/estimate_1m.py --model tiny --law cal/tiny/law.json
    python benchmarks/estimate_1m.py --tokens 200000 --device cuda

Builds a corpus of prompt/completion records whose completions are random words (seeded), with
just enough records that the model's tokenizer counts ≥ --tokens target tokens, in a temporary
folder. Then runs, as separate processes (so imports and model loading are timed too):

1. cold:   memplan estimate CORPUS --json --no-cache   (loads the model, one scoring pass)
2. cached: memplan estimate CORPUS --json              (reads the base-loss cache)

and prints both wall-clock times, the time each run reports for the estimate itself, ℓ and the
rank. The cache is the user's ($MEMLAW_CACHE or ~/.cache/memlaw, where the converted model also
lives); the cold run refreshes its entry for this corpus.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "ben", "dor", "gal", "pex", "qui", "zar", "fen",
             "hul", "wy", "ix", "om", "tre")


def load_tokenizer(name: str):
    """The model's tokenizer only (no weights)."""
    from memlaw.models import resolve_model_path, tiny_tokenizer

    if name == "tiny":
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    if path.endswith(".gguf"):
        p = Path(path)
        return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    return AutoTokenizer.from_pretrained(path)


def random_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))


def build_corpus(path: Path, tokenizer, tokens: int, words_per_record: int, seed: int) -> tuple[int, int]:
    """Write records until the tokenizer counts ≥ ``tokens`` target tokens; (records, tokens)."""
    rng = random.Random(seed)
    total, n, batch = 0, 0, 512
    with open(path, "w", encoding="utf-8") as f:
        while total < tokens:
            completions = [" " + " ".join(random_word(rng) for _ in range(words_per_record)) for _ in range(batch)]
            counts = [len(x) for x in tokenizer(completions, add_special_tokens=False)["input_ids"]]
            for text, c in zip(completions, counts):
                if total >= tokens:
                    break
                f.write(json.dumps({"prompt": f"Entry {n}:", "completion": text}) + "\n")
                total += c
                n += 1
    return n, total


def run_estimate(corpus: Path, args, no_cache: bool) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "memlaw.cli.memplan", "estimate", str(corpus), "--json", "--device", args.device]
    if args.model:
        cmd += ["--model", args.model]
    if args.law:
        cmd += ["--law", args.law]
    if no_cache:
        cmd.append("--no-cache")
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"memplan estimate failed (exit {proc.returncode}): {' '.join(cmd)}")
    return wall, json.loads(proc.stdout)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="base model (default: smollm2-135m)")
    ap.add_argument("--law", default=None, help="law card (default: the card shipped for --model)")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="target tokens to build (default 1,000,000)")
    ap.add_argument("--words-per-record", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="measuring device for the cold run (auto, cpu, cuda)")
    ap.add_argument("--keep", default=None, help="write the corpus here instead of a temporary folder")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="memlaw-bench-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        corpus = folder / f"random-words-{args.tokens}.jsonl"
        t0 = time.perf_counter()
        n, total = build_corpus(corpus, load_tokenizer(args.model), args.tokens, args.words_per_record, args.seed)
        print(f"corpus: {n:,} records, {total:,} target tokens ({args.model} tokenizer), "
              f"{corpus.stat().st_size / 1e6:.1f} MB, built in {time.perf_counter() - t0:.1f} s")

        cold_wall, cold = run_estimate(corpus, args, no_cache=True)
        cached_wall, warm = run_estimate(corpus, args, no_cache=False)
        assert cold["cached"] is False and warm["cached"] is True, (cold["cached"], warm["cached"])
        assert cold["target_tokens"] == warm["target_tokens"] and cold["rank"] == warm["rank"]
        print(f"ℓ = {cold['target_tokens']:,}, L_before = {cold['loss_before']:.4f}, rank = {cold['rank']} "
              f"(recommended {cold['recommended_rank']}), capacity floor rank = {cold['capacity_floor_rank']}")
        print(f"cold   (--no-cache): {cold_wall:8.2f} s wall, estimate {cold['seconds']:8.2f} s "
              f"(measuring pass {cold['measure_seconds']:.2f} s)")
        print(f"cached:              {cached_wall:8.2f} s wall, estimate {warm['seconds']:8.2f} s")


if __name__ == "__main__":
    main()
