"""The demo pipeline behind ``curator-exec demo`` and ``curator-exec plan``.

A small text-curation pipeline that needs no download and gives the same
output on every executor (it is deterministic, and its stages keep no state
between tasks)::

    0 generate_documents   one seed task -> N synthetic documents     (fan-out)
    1 normalize_text       collapse whitespace, lower-case
    2 quality_filter       drop short and repetitive documents       (filter)
    3 split_sentences      one task per sentence                     (fan-out)
    4 count_words          words per sentence                        (batch_size 16)

:func:`reference` computes the expected outputs with plain function calls (no
executor), so ``curator-exec demo`` can check what a backend returned;
:func:`demo_report` and :func:`print_demo_report` are what it prints.
The stages are module-level classes, so distributed engines can pickle them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import Any

from curator_exec_core.pipeline import Pipeline
from curator_exec_core.stages import ProcessingStage, Resources
from curator_exec_core.tasks import Task

__all__ = [
    "DEMO_PIPELINE_NAME",
    "CountWords",
    "GenerateDocuments",
    "NormalizeText",
    "QualityFilter",
    "SplitSentences",
    "build_pipeline",
    "demo_report",
    "normalize",
    "passes_quality",
    "print_demo_report",
    "reference",
    "split_sentences",
    "summarize",
    "synthetic_document",
    "task_sort_key",
]

DEMO_PIPELINE_NAME = "demo_text_curation"

_VOCABULARY = (
    "data", "curation", "pipeline", "model", "token", "filter", "quality", "corpus", "language", "text",
    "sample", "shard", "worker", "stage", "cluster", "node", "batch", "score", "dedup", "clean",
    "fast", "large", "small", "every", "each", "runs", "keeps", "drops", "reads", "writes",
    "the", "a", "of", "and", "with", "for", "on", "in", "to", "from",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# -- the work, as plain functions (shared by the stages and the reference) -------------


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_VOCABULARY) for _ in range(n_words)]
    return " ".join(words).capitalize() + rng.choice(".!?")


def synthetic_document(index: int, seed: int = 0) -> str:
    """Document ``index``: messy whitespace and case; every 10th (from 3) is short, every 10th (from 7) repetitive."""
    rng = random.Random(seed * 1_000_003 + index)
    if index % 10 == 3:  # too short to keep
        return "  " + " ".join(w.upper() for w in rng.sample(_VOCABULARY, 3)) + ".  "
    if index % 10 == 7:  # boilerplate: one sentence repeated
        return (" " + _sentence(rng, 6)) * 6
    text = " ".join(_sentence(rng, rng.randint(5, 12)) for _ in range(rng.randint(2, 5)))
    messy = []
    for word in text.split(" "):
        roll = rng.random()
        messy.append(word.upper() if roll < 0.1 else word)
        messy.append(rng.choice(("  ", "\t", "\n ")) if roll > 0.85 else " ")
    return "".join(messy)


def normalize(text: str) -> str:
    """Collapse every run of whitespace to one space, strip, lower-case."""
    return " ".join(text.split()).lower()


def passes_quality(text: str, min_words: int = 8, min_unique_ratio: float = 0.3) -> bool:
    """Keep documents with at least ``min_words`` words of which enough are distinct."""
    words = text.split()
    return len(words) >= min_words and len(set(words)) / len(words) >= min_unique_ratio


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


# -- stages ---------------------------------------------------------------------------


def _child(parent: Task, data: Any) -> Task:
    """A new task that keeps its parent's dataset, metadata and per-stage records."""
    return Task(data=data, dataset_name=parent.dataset_name, metadata=dict(parent.metadata),
                stage_perf=list(parent.stage_perf))


class GenerateDocuments(ProcessingStage):
    """Seed task -> ``num_documents`` synthetic documents ``{"doc_id", "text"}``."""

    name = "generate_documents"
    resources = Resources(cpus=0.5)

    def __init__(self, num_documents: int = 100, seed: int = 0) -> None:
        self.num_documents = num_documents
        self.seed = seed

    def num_workers(self) -> int:
        return 1  # one seed task: more workers would sit idle

    def process(self, task: Task) -> list[Task]:
        docs = []
        for i in range(self.num_documents):
            child = _child(task, {"doc_id": f"doc-{i:05d}", "text": synthetic_document(i, self.seed)})
            child.dataset_name = child.dataset_name or "demo"
            docs.append(child)
        return docs


class NormalizeText(ProcessingStage):
    name = "normalize_text"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> Task:
        task.data["text"] = normalize(task.data["text"])
        return task


class QualityFilter(ProcessingStage):
    name = "quality_filter"
    resources = Resources(cpus=0.5)

    def __init__(self, min_words: int = 8, min_unique_ratio: float = 0.3) -> None:
        self.min_words = min_words
        self.min_unique_ratio = min_unique_ratio

    def process(self, task: Task) -> Task | None:
        return task if passes_quality(task.data["text"], self.min_words, self.min_unique_ratio) else None


class SplitSentences(ProcessingStage):
    name = "split_sentences"
    resources = Resources(cpus=0.5)

    def process(self, task: Task) -> list[Task]:
        doc_id = task.data["doc_id"]
        return [_child(task, {"doc_id": doc_id, "sentence": i, "text": s})
                for i, s in enumerate(split_sentences(task.data["text"]))]


class CountWords(ProcessingStage):
    name = "count_words"
    resources = Resources(cpus=0.5)
    batch_size = 16

    def process(self, task: Task) -> Task:
        task.data["words"] = len(task.data["text"].split())
        return task


def build_pipeline(num_documents: int = 100, seed: int = 0, min_words: int = 8,
                   min_unique_ratio: float = 0.3) -> Pipeline:
    """The demo pipeline; run it with no initial tasks (it starts from one ``EmptyTask``)."""
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    return Pipeline(
        DEMO_PIPELINE_NAME,
        [GenerateDocuments(num_documents, seed), NormalizeText(), QualityFilter(min_words, min_unique_ratio),
         SplitSentences(), CountWords()],
        description=f"{num_documents} synthetic documents -> normalise -> quality filter -> sentences -> word counts",
    )


# -- checking and summarising -----------------------------------------------------------


def reference(num_documents: int = 100, seed: int = 0, min_words: int = 8,
              min_unique_ratio: float = 0.3) -> list[tuple[str, str, int, int]]:
    """The outputs the pipeline must produce, as sorted ``(task_id, doc_id, sentence, words)`` rows.

    Task ids follow the framework's rule: the seed task is ``"0"``, output ``i``
    of a fan-out is ``"<parent>.<i>"``.
    """
    rows = []
    for i in range(num_documents):
        text = normalize(synthetic_document(i, seed))
        if not passes_quality(text, min_words, min_unique_ratio):
            continue
        for j, sentence in enumerate(split_sentences(text)):
            rows.append((f"0.{i}.{j}", f"doc-{i:05d}", j, len(sentence.split())))
    return sorted(rows, key=lambda r: task_sort_key(r[0]))


def task_sort_key(task_id: str) -> tuple:
    """Sort ``"0.10.2"`` after ``"0.9.0"`` (numeric parts compare as numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in task_id.split("."))


def output_rows(tasks: Iterable[Task]) -> list[tuple[str, str, int, int]]:
    """What the pipeline returned, in the shape of :func:`reference`."""
    rows = [(t.task_id, t.data["doc_id"], t.data["sentence"], t.data["words"]) for t in tasks]
    return sorted(rows, key=lambda r: task_sort_key(r[0]))


def summarize(tasks: Iterable[Task]) -> dict[str, int]:
    tasks = list(tasks)
    return {
        "sentences": len(tasks),
        "documents_kept": len({t.data["doc_id"] for t in tasks}),
        "words": sum(t.data["words"] for t in tasks),
    }


# -- the report of ``curator-exec demo`` ----------------------------------------------------


def demo_report(pipeline: Pipeline, result: Any, *, spec: Any, options: dict[str, Any], documents: int, seed: int,
                samples: int, total_seconds: float) -> dict[str, Any]:
    """What ``curator-exec demo`` reports (``--json`` prints it as is): per-stage counts and workers,
    a summary, failures, ``samples`` sample outputs and whether the outputs match :func:`reference`."""
    from curator_exec_core.cli.report import failed_rows, stage_rows

    expected = reference(documents, seed=seed)
    matches = output_rows(result) == expected and not result.failed_tasks
    ordered = sorted(result, key=lambda t: task_sort_key(t.task_id))
    return {
        "executor": spec.name,
        "distribution": spec.distribution,
        "version": spec.version,
        "options": options,
        "documents": documents,
        "seed": seed,
        "stages": stage_rows(pipeline, result, workers=True),
        "summary": summarize(result),
        "failed_tasks": failed_rows(result),
        "samples": [{"task_id": t.task_id, **t.data} for t in ordered[:samples]],
        "matches_reference": matches,
        "expected_outputs": len(expected),
        "run_seconds": result.metrics.get("seconds"),
        "total_seconds": total_seconds,
    }


def print_demo_report(report: dict[str, Any]) -> None:
    """:func:`demo_report` for a human: the stage table, a summary, samples, the check and the time."""
    from curator_exec_core.cli.report import failed_lines, stage_table

    who = f"{report['distribution']} {report['version']}".strip()
    print(f"Demo pipeline on executor {report['executor']!r} ({who}): "
          f"{report['documents']} synthetic documents, seed {report['seed']}")
    print()
    print(stage_table(report["stages"], workers=True))
    summary = report["summary"]
    print()
    print(f"Outputs: {summary['sentences']} sentence tasks from {summary['documents_kept']} of "
          f"{report['documents']} documents, {summary['words']} words; {len(report['failed_tasks'])} failed tasks.")
    for line in failed_lines(report["failed_tasks"]):
        print(line)
    if report["samples"]:
        print(f"Sample outputs ({len(report['samples'])} of {summary['sentences']}):")
        for s in report["samples"]:
            text = s["text"] if len(s["text"]) <= 60 else s["text"][:57] + "..."
            print(f"  {s['task_id']:<10} {s['doc_id']}  words={s['words']:<3} {text!r}")
    if report["matches_reference"]:
        print(f"Check: outputs match the in-process reference ({report['expected_outputs']} tasks).")
    else:
        print(f"Check: MISMATCH: expected {report['expected_outputs']} tasks as computed in-process, "
              f"got {summary['sentences']} (and {len(report['failed_tasks'])} failed).")
    run = report["run_seconds"]
    run_text = f"{run:.2f} s run, " if isinstance(run, (int, float)) else ""
    print(f"Time: {run_text}{report['total_seconds']:.2f} s in all (loading the executor included).")
