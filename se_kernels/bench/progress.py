"""A progress bar on stderr: rich's on a terminal, one line per step otherwise (logs)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.description = description
        self._bar = None
        self._enabled = enabled
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            except ImportError:
                pass
            else:
                self._bar = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)
                self._bar.start()
                self._task = self._bar.add_task(description, total=total)

    def step(self, what: str, advance: int = 1) -> None:
        """Marks ``advance`` steps done; ``what`` says what was just finished."""
        self.done += advance
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=advance,
                             description=f"{self.description}: {what}"[:70])
        else:
            print(f"[{self.description} {self.done}/{self.total} "
                  f"{time.perf_counter() - self.t0:6.1f}s] {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
