"""The built-in progress observer: tqdm bars driven by ``curator_exec_progress``.

One bar per stage, for every backend, on stderr. ``show_progress=False`` turns
it off; ``progress_interval`` is the minimum seconds between redraws. tqdm draws
only when stderr is a terminal, so logs and CI stay clean; a one-line summary per
stage is logged at INFO when the run ends either way.
"""

from __future__ import annotations

import logging
from typing import Any

from curator_exec_core.hookspecs import hookimpl

logger = logging.getLogger("curator_exec")


class TqdmProgress:
    def __init__(self) -> None:
        self._bars: dict[str, list[Any]] = {}

    @hookimpl
    def curator_exec_progress(self, event: Any) -> None:
        options = getattr(event.executor, "options", None)
        if event.kind == "run_started":
            if options is None or not options.show_progress:
                return
            from tqdm.auto import tqdm  # lazy: importing tqdm costs start-up time

            self._bars[event.run_id] = [
                tqdm(desc=f"{i}:{name}"[:24], total=event.total if i == 0 else None, unit="task",
                     mininterval=max(0.1, options.progress_interval), leave=True, disable=None, position=i)
                for i, name in enumerate(event.stages)
            ]
        elif event.kind == "stage_progress":
            bars = self._bars.get(event.run_id)
            if bars and 0 <= event.index < len(bars):
                bar = bars[event.index]
                bar.update(event.tasks_in + event.tasks_resumed - bar.n)
                failed = f" failed={event.tasks_failed}" if event.tasks_failed else ""
                resumed = f" resumed={event.tasks_resumed}" if event.tasks_resumed else ""
                bar.set_postfix_str(f"out={event.tasks_out}{failed}{resumed}", refresh=False)
        elif event.kind == "run_finished":
            for bar in self._bars.pop(event.run_id, []):
                bar.close()
