"""One progress bar over a whole ``lorakit run``, with tqdm's elapsed time and ETA.

A run's work comes in units of similar size on the CPU: one adapter trained (or loaded from the cache)
and one merge method searched on validation and scored on test, for every init and seed. The bar
counts them, ``len(inits) · len(seeds) · (len(tasks) + len(methods))`` in all, and names the unit it
has just finished; the inner bars (training steps, OSRM's feature batches) show progress within one.
"""

from __future__ import annotations

import sys


class RunProgress:
    """``step(what)`` after each unit of work; ``close()`` at the end (also when disabled)."""

    def __init__(self, inits: int, seeds: int, tasks: int, methods: int, enabled: bool = True,
                 desc: str = "lorakit run") -> None:
        self.total = inits * seeds * (tasks + methods)
        self.done = 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm  # lazy, as elsewhere: importing lorakit stays light

            self.bar = tqdm(total=self.total, desc=desc, unit="unit", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc}: {n_fmt}/{total_fmt} units [{elapsed}<{remaining}] {postfix}")

    def step(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
