"""The commands' progress display (rich): a bar over scored tokens, one over training steps with
the live coverage and an ETA, one over a sweep's points. The library itself reports progress as
calls ``fn(stage, done, total, info)`` or not at all; it asks for these only when a caller passes
``progress=True`` (the CLIs do, unless --quiet)."""

from __future__ import annotations

import sys
import time


class TokenBar:
    """A transient bar over target tokens; ``with TokenBar(description, total) as advance: advance(n)``."""

    def __init__(self, description: str, total: int):
        self.description, self.total = description, total

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        return False


class TrainBar:
    """Progress over steps with the live coverage and an ETA: a rich bar on a terminal, a plain line
    every ~10 s otherwise (logs, CI); silent when disabled. The ETA is for all max_steps at the
    mean step time so far: an upper bound, as training stops early once every token is locked."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self.live = enabled and sys.stderr.isatty()
        self.last_print = 0.0
        self.start = time.perf_counter()
        self.mark: tuple[float, int] | None = None  # (time, step) at the end of the first epoch
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.p = Progress("train", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA ≤"),
                              TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.p.start()
            self.task = self.p.add_task("train", total=total, info="")

    def eta(self, step: int) -> float | None:
        """Seconds left if every remaining step takes the mean time of the steps since the first
        epoch (which also pays one-off costs: the frozen-prefix cache, warm-up)."""
        now = time.perf_counter()
        if self.mark is None:
            self.mark = (now, step)
            return None
        t0, s0 = self.mark
        if step <= s0:
            return None
        return (now - t0) / (step - s0) * max(0, self.total - step)

    def update(self, step, *_):
        if self.live:
            self.p.update(self.task, completed=step)

    def epoch(self, entry):
        eta = self.eta(entry["step"])
        if self.live:
            self.p.update(self.task, info=f"loss {entry['mean_loss']:.3f} coverage {entry['coverage']:.3f}")
        elif self.enabled and time.perf_counter() - self.last_print > 10:
            self.last_print = time.perf_counter()
            eta_text = "" if eta is None else f", ETA ≤ {eta:.0f} s"
            print(f"train step {entry['step']}/{self.total}: loss {entry['mean_loss']:.3f} "
                  f"coverage {entry['coverage']:.3f} ({entry['seconds']:.0f} s{eta_text})", file=sys.stderr,
                  flush=True)

    def close(self):
        if self.live:
            self.p.stop()


class SweepBar:
    """One progress bar over the whole sweep, weighted by length (a point's cost ~ ℓ), with an ETA;
    one line per finished point (also readable in a batch job's log)."""

    def __init__(self, todo, console):
        self.todo, self.console = todo, console
        self.n_done = 0

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("sweep {task.fields[what]}"), BarColumn(),
                          TextColumn("{task.fields[count]}"), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn(), console=self.console, transient=False)
        self.p.start()
        self.task = self.p.add_task("sweep", total=sum(n for _, n in self.todo), what="",
                                    count=f"0/{len(self.todo)} points")
        return self

    def start(self, rank, length):
        self.p.update(self.task, what=f"r={rank} ℓ={length}")

    def done(self, pt):
        self.n_done += 1
        self.p.update(self.task, advance=pt["length"], count=f"{self.n_done}/{len(self.todo)} points")
        self.p.console.print(
            f"r={pt['rank']} ℓ={pt['length']}: L {pt['loss_before']:.3f} → "
            + (f"{pt['loss_after_B']:.3f} (B) → " if "loss_after_B" in pt else "")
            + f"{pt['loss_after']:.3f}, coverage {pt['coverage']:.3f}, exact {pt['exact_records']}/{pt['records']}, "
            f"{pt['steps']} steps ({pt['stop_reason']}, "
            + {True: "converged", False: "NOT converged", None: "convergence not tested"}[pt.get("converged")]
            + f"), {pt['seconds']:.1f} s", soft_wrap=True)

    def __exit__(self, *exc):
        self.p.stop()
        return False
