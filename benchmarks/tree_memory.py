"""Peak memory of a command and every process it starts (vLLM serves from child processes, which
/usr/bin/time's max RSS, the largest single process, does not add up).

    python benchmarks/tree_memory.py -- memaudit ADAPTER --backend vllm --quiet

Samples every 0.1 s: the sum over the process tree of PSS (proportional set size: a page shared by
n processes counts 1/n in each, so shared libraries and memory-mapped weights are not counted
twice), and the front-end process's own RSS. Prints one line: wall seconds, peak tree PSS, peak
front-end RSS, the exit code. Linux only (PSS comes from /proc/PID/smaps_rollup).
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__)
        return 2
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak_tree = peak_front = 0
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                total += p.memory_full_info().pss
                if p.pid == root.pid:
                    peak_front = max(peak_front, p.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak_tree = max(peak_tree, total)
        time.sleep(0.1)
    rc = proc.wait()
    print(f"{time.perf_counter() - start:8.1f} s  peak tree PSS {peak_tree / 2**20:7.0f} MiB  "
          f"peak front-end RSS {peak_front / 2**20:7.0f} MiB  exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
