"""Slurm's own commands, as the executor uses them: ``sbatch``, ``squeue``, ``scancel``, ``scontrol``,
``sinfo``. Nothing else talks to Slurm, so this is the one place that knows their output formats.

No accounting database is assumed (``sacct`` needs one): a job's elements are alive while ``squeue``
lists them; what became of an element is read from the files it wrote in the run directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

from curator_exec_core.errors import CuratorExecError

__all__ = ["SlurmError", "Slurm", "parse_records"]

logger = logging.getLogger("curator_exec.slurm")

#: seconds a Slurm command may take before the executor gives up on it (a controller that hangs)
COMMAND_TIMEOUT = 60.0
#: squeue states of an element that has not ended
ALIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                          "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD",
                          "STOPPED", "PREEMPTED"})


class SlurmError(CuratorExecError, RuntimeError):
    """A Slurm command failed, or Slurm is not there."""


def parse_records(text: str) -> list[dict[str, str]]:
    """``scontrol show ... -o`` output: one record per line, ``Key=Value`` pairs split at spaces (a
    value such as ``OS=Linux 6.1`` that holds a space keeps its continuation)."""
    records = []
    for line in text.splitlines():
        record: dict[str, str] = {}
        key = None
        for word in line.split():
            name, sep, value = word.partition("=")
            if sep and name and name[0].isalpha():
                key = name
                record[key] = value
            elif key is not None:
                record[key] += " " + word
        if record:
            records.append(record)
    return records


class Slurm:
    """The commands, run with ``env`` over this process's environment (``SLURM_CONF`` for a test
    cluster). Every failure is a :class:`SlurmError` that names the command and what it printed."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(env or {})

    def _environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def available(self) -> str | None:
        """None if the commands are here and the controller answers, else what is wrong."""
        missing = [c for c in ("sbatch", "squeue", "scancel", "scontrol") if shutil.which(c) is None]
        if missing:
            return (f"Slurm's commands are not on PATH ({', '.join(missing)} missing): run on a machine of the "
                    "cluster (a login node), or install Slurm's client tools")
        try:
            self.run(["scontrol", "ping"])
        except SlurmError as exc:
            return f"the Slurm controller does not answer: {exc}"
        return None

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, env=self._environ(), timeout=timeout)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]!r} is not on PATH: the slurm executor needs Slurm's client commands "
                             "(sbatch, squeue, scancel, scontrol) where the pipeline runs") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{' '.join(argv[:3])} ... did not answer in {timeout:g} s "
                             "(is slurmctld up? `scontrol ping`)") from None
        if check and done.returncode != 0:
            text = (done.stderr or done.stdout).strip()
            raise SlurmError(f"`{' '.join(argv)}` failed (exit {done.returncode}): {text}")
        return done.stdout

    # -- jobs -------------------------------------------------------------------------------
    def sbatch(self, args: Sequence[str], script: str, script_args: Sequence[str] = ()) -> str:
        """Submit ``script`` (a path; empty with ``--wrap`` in ``args``) with sbatch's ``args`` and the
        script's ``script_args``; returns the job id."""
        out = self.run(["sbatch", "--parsable", *args, *([script] if script else []), *script_args]).strip()
        job_id = out.split(";", 1)[0].strip()
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed {out!r}, not a job id")
        return job_id

    def alive(self, job_ids: Iterable[str]) -> dict[str, str]:
        """``{"<job>_<element>" or "<job>": state}`` for every element of ``job_ids`` that has not
        ended (``squeue -r``: one line per element, pending ones included)."""
        ids = [j for j in job_ids if j]
        if not ids:
            return {}
        out = self.run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i %T"], check=False)
        states: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] in ALIVE_STATES:
                states[parts[0]] = parts[1]
        return states

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job ID -o``: one record per element while the controller remembers the
        job (``MinJobAge`` after its end); an empty list after that."""
        out = self.run(["scontrol", "show", "job", "-o", job_id], check=False)
        return [r for r in parse_records(out) if "JobId" in r]

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = [j for j in job_ids if j]
        if ids:
            self.run(["scancel", *ids], check=False)

    # -- the cluster -------------------------------------------------------------------------
    def default_partition(self) -> str:
        out = self.run(["sinfo", "-h", "-o", "%P"])
        names = [p.strip() for p in out.split()]
        for name in names:
            if name.endswith("*"):
                return name[:-1]
        if names:
            return names[0]
        raise SlurmError("sinfo lists no partition")

    def partition(self, name: str) -> dict[str, str]:
        records = parse_records(self.run(["scontrol", "show", "partition", "-o", name], check=False))
        if not records:
            known = " ".join(self.run(["sinfo", "-h", "-o", "%P"], check=False).split()).replace("*", "")
            raise SlurmError(f"Slurm has no partition {name!r} (partitions: {known or 'none'}); set the "
                             "executor's 'partition' option to one of them")
        return records[0]

    def nodes(self, partition: str) -> list[dict[str, Any]]:
        """The node records (``scontrol show node -o``) of ``partition``."""
        nodes = []
        for record in parse_records(self.run(["scontrol", "show", "node", "-o"])):
            if partition in record.get("Partitions", "").split(","):
                nodes.append(record)
        return nodes
