"""Recovery: from the journals of one part, which source tasks finished and what they produced."""

from __future__ import annotations

import logging
import os
from fractions import Fraction

from curator_exec_core.checkpoint.journal import Dropped, Output, Record, read_journal
from curator_exec_core.checkpoint.lineage import shares
from curator_exec_core.tasks import Task

__all__ = ["finished", "finished_by_source"]

logger = logging.getLogger("curator_exec")


def _read_attempts(folder: str) -> tuple[dict[str, dict[tuple[bool, str], Record]], int]:
    """Every journal of ``folder``, its records by attempt (a record an engine repeated, a re-run
    chunk, counts once), lineages made explicit; and how many files had a torn end."""
    by_attempt: dict[str, dict[tuple[bool, str], Record]] = {}
    torn = 0
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if not name.endswith(".journal"):
            continue
        records, cut = read_journal(os.path.join(folder, name))
        if cut:
            torn += 1
            logger.warning("checkpoint: ignoring the torn end of %s (a run was killed while writing it)",
                           os.path.join(folder, name))
        keep = by_attempt.setdefault(name.split("-", 1)[0], {})
        for r in records:
            if isinstance(r, Dropped):
                keep.setdefault((True, r.key), r._replace(lineage=shares(r.lineage, r.task_id)))
            else:
                keep.setdefault((False, r.task_id), r._replace(lineage=shares(r.lineage, r.task_id)))
    return by_attempt, torn


def _owners(by_attempt: dict[str, dict[tuple[bool, str], Record]], sources: set[str] | None) -> dict[str, str]:
    """Source -> the (earliest) attempt in which all of its share was recorded."""
    owner: dict[str, str] = {}
    for attempt in sorted(by_attempt):
        share: dict[str, Fraction] = {}
        for r in by_attempt[attempt].values():
            for s, w in r.lineage:
                share[s] = share.get(s, Fraction(0)) + w
        for s, total in share.items():
            if total == 1 and (sources is None or s in sources) and s not in owner:
                owner[s] = attempt
    while True:  # an output shared by several sources counts only if all of them finished in its attempt
        bad: set[str] = set()
        for attempt, recs in by_attempt.items():
            for r in recs.values():
                mine = [s for s, _ in r.lineage if owner.get(s) == attempt]
                if mine and len(mine) != len(r.lineage):
                    bad.update(mine)
        if not bad:
            return owner
        for s in bad:
            del owner[s]


def finished_by_source(folder: str, sources: set[str] | None) -> tuple[set[str], dict[str, list[Task]], int]:
    """From the journals of one part: the sources that are done (of ``sources``; None: any), their
    outputs by (first) source, and how many journal files had a torn end."""
    by_attempt, torn = _read_attempts(folder)
    owner = _owners(by_attempt, sources)
    outputs: dict[str, list[Task]] = {}
    for attempt, recs in by_attempt.items():
        for r in recs.values():
            if isinstance(r, Output) and r.lineage and owner.get(r.lineage[0][0]) == attempt:
                outputs.setdefault(r.lineage[0][0], []).append(r.task)
    return set(owner), outputs, torn


def finished(folder: str, sources: set[str] | None) -> tuple[set[str], list[Task], int]:
    """From the journals of one part: the sources that are done (of ``sources``; None: any), their
    outputs, and how many journal files had a torn end."""
    done, outputs, torn = finished_by_source(folder, sources)
    return done, [t for tasks in outputs.values() for t in tasks], torn
