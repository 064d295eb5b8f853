"""A private one-node Slurm cluster on localhost for tests: Debian's slurm-wlm 22.05 + munge, stdlib only.

Use::

    problem = ensure_installed()          # None, or why Slurm cannot be had (not root, no apt-get, ...)
    cluster = start(state_dir)            # munged + slurmctld + slurmd under state_dir; node idle on return
    subprocess.run(["sbatch", ...], env=cluster.environ())   # or env={**os.environ, **cluster.env}
    cluster.stop()                        # scancel all, then SIGTERM/SIGKILL the PIDs it started, nothing else

    python slurm_cluster.py start|stop|status|selfcheck DIR   # the same from a shell

`start` reuses, without starting anything (and its `stop` then does nothing): the cluster a `start DIR` of
another process left running in the same DIR, or (reuse_env=True) the one SLURM_CONF names when `sinfo`
answers. A watchdog process (this file, `watch`) stops the cluster if the process that started it dies
without stopping it (pytest killed by a timeout).

Everything lives under state_dir: slurm.conf, munge/ (own key, 1024 random bytes, mode 0400, owned by
the user running munged: root; own socket, passed to Slurm as AuthInfo=socket=...), ctld/ (state save),
slurmd/ (spool), log/ (munged.out, slurmctld.log/.out, slurmd.log/.out), pids.json (PIDs + kernel start
times, so a recycled PID is never signalled). Ports: two free TCP ports picked at start.

MEASURED (Debian 12 Firecracker VM, 2 cores, 24 GiB, root, no systemd, no cgroup delegation; `selfcheck`)
- install: `apt-get install slurm-wlm munge` took 11.5 s with recommends (43 packages, 8.4 MB fetched;
  apt lists were already there, no `apt-get update` needed). ensure_installed uses
  --no-install-recommends: 9 packages (munge libmunge2 slurm-wlm slurmctld slurmd slurm-client
  slurm-wlm-basic-plugins libhwloc15 liblua5.1-0), 3.6 MB, fetched in 1.1 s; basic-plugins has every
  plugin this conf uses. The packages' postinst cannot start services (no systemd, policy-rc.d denies).
- start: 1.2-1.4 s to node idle (munged socket ~0.1 s, slurmctld answers ~0.5 s, slurmd registers ~0.5 s).
  stop: 0.1-0.5 s (scancel all; SIGTERM slurmd, slurmctld, munged; each exits at once).
- scheduling: slurmctld 22.05 starts jobs only on its once-a-second background tick (submit, job end and
  epilog-complete merely request a run; the log shows every `sched: Allocate` at the same fraction of a
  second), so sbatch -> running is 0.05-1.0 s, a single `true` job sbatch -> gone from squeue 0.8-1.0 s,
  and a 10-element array of `true` takes ~ceil(10 / slots) s: 2.1-5.0 s with 2 CPUs (2 per tick, more
  when the backfill tick lands between main ticks), 2.1-2.9 s with cpus=4, 1.0 s with cpus=10
  (start(cpus=N) declares N CPUs; SlurmdParameters=config_overrides keeps the node from draining).
  Tried: sched/builtin, no bf_interval, sched_min_interval=0: none faster; bf_interval=30 slower (5 s).
- arrays: `sbatch --array=0-3%2` runs all four, two at a time. NOTE `%a` is expanded only in -o/-e/-i
  file names, not in --wrap/script text: `--wrap "echo $SLURM_ARRAY_TASK_ID > out.%a"` writes one file
  literally named `out.%a`; use `out.$SLURM_ARRAY_TASK_ID` or `-o out.%a`.
  Element env (element 1 of array 1): SLURM_ARRAY_JOB_ID=1, SLURM_ARRAY_TASK_ID=1, SLURM_JOB_ID=3 (each
  element gets its own job id once it starts; the last element keeps the array's id), also
  SLURM_ARRAY_TASK_COUNT/MIN/MAX/STEP; SLURM_RESTART_COUNT is UNSET until a requeue, then "1", "2", ...;
  SLURM_CONF is there because sbatch exports the submitter's environment (--export=ALL).
- `sbatch --parsable` prints the bare job id ("1"; "id;cluster" only in a federation).
- `--dependency=afterok:A` waits for A (Reason=Dependency), runs after it; afterok on a FAILED job stays
  PENDING forever with Reason=DependencyNeverSatisfied unless the job had --kill-on-invalid-dep=yes.
- `scancel ID_IDX` on a running element: CANCELLED within ~1 s, the others go on; a pending element
  takes its place on the next tick. `scancel ID` of a whole array: gone from squeue in < 0.1 s. A job
  that ignores SIGTERM is gone 4.7 s after scancel (KillWait=1).
- `srun -n 2` inside `sbatch -n 2`: two tasks, SLURM_PROCID 0 and 1 (MpiDefault=none).
- `sacct` FAILS (rc 1, "Slurm accounting storage is disabled"). Job state instead:
  while queued or running `squeue -h -j ID -o "%i %T %r"` (`-r` one line per array element; %A job id,
  %F array job id, %K array index; a pending array shows as `1_[2-5]` without -r); after the end
  `squeue -h -j ID -t all -o ...` (COMPLETED/FAILED/CANCELLED/TIMEOUT...) and `scontrol show job -o ID`
  or `ID_IDX` (JobState=, ExitCode=3:0, Restarts=) keep the record for MinJobAge seconds (600 here; with
  MinJobAge=5 it was gone after 8 s), then both say rc 1 "slurm_load_jobs error: Invalid job id specified".
  `scontrol show job -o ARRAYID` prints one line per element.
- `sbatch --requeue` + `scontrol requeue ID`: rc 0; the job goes PENDING (Reason=BeginTime) and runs again
  with SLURM_RESTART_COUNT=1 6.5 s later: a requeued job waits AuthInfo cred_expire (default 120 s!) + 1
  s; cred_expire=5 is Slurm's minimum (lower: "AuthInfo=cred_expire=1 invalid").
- time limits have minute granularity: `-t 0:03` is rounded up to 1 min and checked every ~30 s.
- `sinfo -h -o "%P %a %l %D %c %m %G"` -> `debug* up infinite 1 2 21694 (null)`
- `scontrol show node -o` -> `NodeName=vm Arch=x86_64 CoresPerSocket=2 CPUAlloc=0 CPUEfctv=2 CPUTot=2
  CPULoad=0.59 ... Gres=(null) NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8 ... RealMemory=21694
  AllocMem=0 FreeMem=23661 Sockets=1 Boards=1 State=IDLE ThreadsPerCore=1 ... Partitions=debug ...
  CfgTRES=cpu=2,mem=21694M,billing=2 AllocTRES= ...` (one line, key=value, some values contain spaces:
  OS=Linux 6.18... #1 SMP ...).
- MaxTime=INFINITE shows as TimeLimit=365-00:00:00 in `scontrol show job`, `infinite` in sinfo.

PITFALLS
- No systemd in the VM/container: the packages' services never start; start the daemons by hand, in
  the foreground (-D / -F) under Popen, which gives their PIDs directly (no pid-file races).
- No cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, JobAcctGatherType=none: memory is
  only bookkept (DefMemPerCPU = RealMemory / CPUs), never enforced; no cgroup.conf is needed.
- munged runs as root (no --force needed): the key must be owned by the user running munged and not
  readable by others (0400); we always make our own key, so /etc/munge/munge.key (owned by munge) and a
  system munged are never touched. Its directory needs o+x or non-root clients cannot reach the socket.
- Hostname: NodeName is `slurmd -C`'s (= `hostname -s`), slurmd gets `-N NAME`, and NodeAddr/SlurmctldHost
  address are 127.0.0.1, so nothing needs the hostname to resolve. slurmctld still requires
  SlurmctldHost's name to equal `hostname -s`, so a hostname change needs a new start.
- slurmstepd double-forks out of slurmd's session, so killing slurmd does not end a running job: stop()
  scancels every job first, then SIGKILLs any slurmstepd left whose cwd/open files are under state_dir
  (and its descendants).
- In this VM PID 1 does not reap orphans: daemons whose starter exited (the CLI `start`) show as
  <defunct> after `stop` until the machine ends; a pytest-owned cluster is reaped by its Popen.
- Unix socket paths are limited to 107 bytes (munge's socket, slurmd's spool/NODE_JOB.STEP): a state_dir
  longer than ~60 characters is refused with a clear error.
- A SLURM_CONF naming a missing file makes every Slurm command retry for 60 s before failing; one
  naming a dead cluster fails after ~4 s ("Unable to contact slurm controller").
- Harmless log noise: "mpi/pmix... can not load PMIx library" (slurmd/slurmctld load every MPI plugin),
  munged "Unauthorized credential for client UID=0" once per job, slurmctld "Could not open job state
  file" on a fresh state dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: the programs a cluster needs (clients in /usr/bin, daemons in /usr/sbin on Debian)
NEEDED = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun", "slurmctld", "slurmd", "munged")
PARTITION = "debug"
#: where the daemons may be when PATH lacks the sbin directories (nox sessions, non-login shells)
_EXTRA_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")
_PIDS_FILE = "pids.json"
#: the main scheduler and the backfill scheduler each run every second (the floor: slurmctld's own tick)
SCHED_TYPE = "sched/backfill"
SCHED_PARAMS = "sched_interval=1,batch_sched_delay=0,bf_interval=1,bf_resolution=1,bf_continue"


def which(name: str) -> str | None:
    """`name` on PATH, else in the usual sbin/bin directories."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))


def missing() -> list[str]:
    """The programs of NEEDED that cannot be found."""
    return [name for name in NEEDED if which(name) is None]


def ensure_installed(timeout: float = 900) -> str | None:
    """Install Debian's slurm-wlm and munge if a program is missing. None when all are there, else why not.

    Needs root and apt-get; runs `apt-get update` only when the install fails without it.
    """
    if not missing():
        return None
    lacking = ", ".join(missing())
    apt = which("apt-get")
    if os.geteuid() != 0 or apt is None:
        why = "not root" if os.geteuid() != 0 else "no apt-get"
        return f"missing {lacking} ({why}): needs root and apt-get to install slurm-wlm and munge"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef",
           "-o", "Dpkg::Options::=--force-confold", "slurm-wlm", "munge"]
    out = ""
    for update_first in (False, True):
        try:
            if update_first:
                subprocess.run([apt, "update", "-q"], env=env, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"missing {lacking}: 'apt-get install slurm-wlm munge' did not finish in {timeout:.0f} s"
        out = (res.stdout + res.stderr)[-2000:]
        if res.returncode == 0 and not missing():
            return None
    return f"missing {', '.join(missing()) or lacking}: 'apt-get install slurm-wlm munge' failed:\n{out}"


# ------------------------------------------------------------------------------------------------ helpers


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    exe = which(args[0]) or args[0]
    return subprocess.run([exe, *args[1:]], env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state is [0], ppid [1], start time [19])."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`, to tell a recycled PID from ours."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _alive(pid: int, start: str | None) -> bool:
    """`pid` runs (not a zombie) and, when `start` is known, is the process that had that start time."""
    fields = _stat(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no file)\n"


# ------------------------------------------------------------------------------------------------ cluster


@dataclass
class Cluster:
    """A running cluster. `env` holds what a client command needs on top of os.environ: SLURM_CONF."""

    conf_path: str
    node: str
    cpus: int
    memory_mb: int
    partition: str = PARTITION
    state_dir: str | None = None
    #: True when this object stops the daemons in stop(); False for a reused cluster
    owned: bool = False
    #: the daemons' PIDs: munged, slurmctld, slurmd (and watchdog, when there is one)
    pids: dict[str, int] = field(default_factory=dict)
    _starts: dict[str, str | None] = field(default_factory=dict, repr=False)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.conf_path}

    def environ(self) -> dict[str, str]:
        """os.environ plus `env`: for subprocess.run(..., env=cluster.environ())."""
        return dict(os.environ, **self.env)

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a client command against this cluster: `cluster.run("squeue", "-h")` (text, captured)."""
        return _run(list(args), env=self.env, timeout=timeout)

    def logs(self) -> str:
        """The tails of the daemons' logs (for an error message)."""
        if not self.state_dir:
            return ""
        log = os.path.join(self.state_dir, "log")
        names = ("munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out")
        return "".join(f"--- {name}:\n{_tail(os.path.join(log, name))}" for name in names)

    def stop(self, grace: float = 10) -> None:
        """Cancel every job, then end the daemons this object (or `start DIR`) started, by PID only."""
        if not self.owned:
            return
        daemons = [n for n in ("slurmd", "slurmctld", "munged") if n in self.pids]
        if any(_alive(self.pids[n], self._starts.get(n)) for n in daemons):
            _cancel_all(self)
        for name in daemons:  # slurmd first (its job steps were cancelled), then the controller, then munge
            _terminate(self.pids[name], self._starts.get(name), grace, self._procs.get(name))
        if self.state_dir:  # a job step that outlived its slurmd (scancel did not end it): it and its tasks
            for pid in _leftover_steps(self.state_dir):
                _kill(pid, signal.SIGKILL)
            try:
                os.unlink(os.path.join(self.state_dir, _PIDS_FILE))
            except OSError:
                pass
        if "watchdog" in self.pids and os.getpid() != self.pids["watchdog"]:
            _terminate(self.pids["watchdog"], self._starts.get("watchdog"), 2, self._procs.get("watchdog"))
        self.owned = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cancel_all(cluster: Cluster, wait: float = 8) -> None:
    """scancel every job of this private cluster; wait (bounded) until none is left running."""
    try:
        res = cluster.run("squeue", "-h", "-o", "%i", timeout=10)
        if res.returncode != 0 or not res.stdout.strip():
            return
        cluster.run("scancel", "--quiet", *sorted({j.split("_")[0] for j in res.stdout.split()}), timeout=10)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            res = cluster.run("squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i", timeout=10)
            if res.returncode != 0 or not res.stdout.strip():
                return
            time.sleep(0.1)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _leftover_steps(state_dir: str) -> list[int]:
    """This cluster's slurmstepd processes (cwd or an open file under state_dir), then their descendants.

    slurmstepd double-forks into a session of its own, so neither slurmd's PID nor its session finds it;
    it inherits slurmd's cwd (state_dir) and keeps slurmd's log file open.
    """
    children: dict[int, list[int]] = {}
    steps = []
    prefix = state_dir.rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = _stat(pid)
        if not fields:
            continue
        children.setdefault(int(fields[1]), []).append(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"slurmstepd"):
                    continue
            paths = [os.readlink(f"/proc/{pid}/cwd") + "/"]
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    pass
        except OSError:
            continue
        if any(p.startswith(prefix) for p in paths):
            steps.append(pid)
    found, todo = [], list(steps)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _terminate(pid: int, start: str | None, grace: float, proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM `pid` if it is still the process started at `start`; SIGKILL after `grace` seconds."""
    if not _alive(pid, start):
        if proc is not None:
            proc.poll()
        return
    _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if (proc is not None and proc.poll() is not None) or not _alive(pid, start):
            return
        time.sleep(0.05)
    if _alive(pid, start):
        _kill(pid, signal.SIGKILL)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _answers(env: dict[str, str]) -> bool:
    try:
        res = _run(["sinfo", "-h", "-o", "%P"], env=env, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and bool(res.stdout.strip())


def _describe(conf_path: str) -> Cluster:
    """A Cluster object (not owned) for a running cluster: its default partition, first node, CPUs, memory."""
    res = _run(["sinfo", "-h", "-N", "-o", "%P %N %c %m"], env={"SLURM_CONF": conf_path})
    rows = [line.split() for line in res.stdout.splitlines() if len(line.split()) == 4]
    rows.sort(key=lambda r: not r[0].endswith("*"))  # the default partition first
    part, node, cpus, mem = rows[0] if rows else (PARTITION, socket.gethostname().split(".")[0], "1", "0")
    return Cluster(conf_path=conf_path, node=node, cpus=int(cpus.rstrip("+")), memory_mb=int(mem.rstrip("+")),
                   partition=part.rstrip("*"))


def _load_recorded(state_dir: str) -> Cluster | None:
    """The cluster that `start(state_dir)` (maybe in another process) recorded, if a daemon of it still runs."""
    path = os.path.join(state_dir, _PIDS_FILE)
    try:
        with open(path) as f:
            rec = json.load(f)
        pids = {k: int(v) for k, v in rec["pids"].items()}
        cluster = Cluster(conf_path=rec["conf_path"], node=rec["node"], cpus=rec["cpus"], memory_mb=rec["memory_mb"],
                          partition=rec.get("partition", PARTITION), state_dir=state_dir, owned=True,
                          pids=pids, _starts=rec.get("starts", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not any(_alive(pid, cluster._starts.get(n)) for n, pid in pids.items() if n != "watchdog"):
        try:
            os.unlink(path)
        except OSError:
            pass
        return None
    return cluster


def _record(cluster: Cluster) -> None:
    assert cluster.state_dir
    rec = {"conf_path": cluster.conf_path, "node": cluster.node, "cpus": cluster.cpus, "memory_mb": cluster.memory_mb,
           "partition": cluster.partition, "pids": cluster.pids, "starts": cluster._starts}
    tmp = os.path.join(cluster.state_dir, _PIDS_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(cluster.state_dir, _PIDS_FILE))


def _hardware() -> dict[str, str]:
    """`slurmd -C`: what slurmd will find (NodeName, CPUs, SocketsPerBoard, CoresPerSocket, ..., RealMemory)."""
    try:
        res = _run(["slurmd", "-C"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    first = res.stdout.splitlines()[0] if res.returncode == 0 and res.stdout.strip() else ""
    return dict(kv.split("=", 1) for kv in first.split() if "=" in kv)


SLURM_CONF_TEMPLATE = """\
# written by slurm_cluster.py: a private one-node cluster for tests
ClusterName=testcluster
SlurmctldHost={node}({addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# our own munged; cred_expire is also how long a requeued job waits before it may run again (min 5)
AuthInfo=socket={munge_socket},cred_expire={cred_expire}
MailProg=/bin/true
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/slurmd
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (containers, VMs without systemd): track processes by parentage, no binding, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters={select_params}
DefMemPerCPU={mem_per_cpu}
SlurmdParameters=config_overrides
ReturnToService=2
# timing: scheduling every second (slurmctld's floor), quick kills, finished jobs visible for MinJobAge s
SchedulerType={sched_type}
SchedulerParameters={sched_params}
MessageTimeout=5
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
KillWait=1
OverTimeLimit=0
CompleteWait=0
WaitTime=0
MinJobAge={min_job_age}
MaxJobCount=50000
MaxArraySize=1001
TmpFS=/tmp
NodeName={node} NodeAddr={addr} NodeHostname={node} CPUs={cpus}{topology} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def start(state_dir: str, timeout: float = 60, reuse_env: bool = True, cpus: int | None = None,
          memory_mb: int | None = None, min_job_age: int = 600, select_params: str = "CR_CPU_Memory",
          sched_type: str = SCHED_TYPE, sched_params: str = SCHED_PARAMS, cred_expire: int = 5,
          watchdog: bool = True) -> Cluster:
    """Start munged, slurmctld and slurmd for a private cluster under `state_dir`; return once the node is idle.

    cpus: CPUs to declare (default: the real count, with slurmd -C's sockets/cores/threads); memory_mb:
    RealMemory (default: 90% of the real, at least 1 GiB below it). watchdog: stop the cluster if this
    process dies without stopping it. Reuses a running cluster (see the module doc). Raises RuntimeError,
    with the daemons' log tails, when a daemon dies or the node is not idle within `timeout` seconds; what
    was started is stopped first.
    """
    state_dir = os.path.abspath(state_dir)
    recorded = _load_recorded(state_dir)
    if recorded is not None and _answers(recorded.env):
        recorded.owned = False  # another process started it: that one (or `stop DIR`) stops it
        return recorded
    # (a SLURM_CONF naming no file makes every Slurm command retry for 60 s: look first)
    if reuse_env and os.path.isfile(os.environ.get("SLURM_CONF", "")) and _answers({}):
        return _describe(os.environ["SLURM_CONF"])
    problem = ensure_installed()
    if problem:
        raise RuntimeError(problem)
    if os.geteuid() != 0:
        raise RuntimeError("a private Slurm needs root: slurmd starts jobs as their user, SlurmUser=root")
    for sub in ("", "ctld", "slurmd", "log", "munge"):
        os.makedirs(os.path.join(state_dir, sub), exist_ok=True)
        os.chmod(os.path.join(state_dir, sub), 0o755)
    munge_dir = os.path.join(state_dir, "munge")
    key = os.path.join(munge_dir, "munge.key")
    if not os.path.exists(key):  # our own key: owned by us (who run munged), mode 0400
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
    munge_socket = os.path.join(munge_dir, "munge.socket")

    hw = _hardware()
    node = hw.get("NodeName") or socket.gethostname().split(".")[0]
    ncpus = cpus or int(hw.get("CPUs") or _cpu_count())
    real = int(hw.get("RealMemory") or _mem_total_mb())
    mem = memory_mb or max(256, min(real - 1024, int(real * 0.9)))
    # unix socket paths have 107 bytes at most: munge's, and slurmd's spool/NODE_JOBID.STEPID
    longest = len(os.path.join(state_dir, "slurmd", f"{node}_4294967295.4294967295"))
    if longest > 107:
        raise RuntimeError(f"state_dir is {longest - 107} characters too long for unix socket paths: {state_dir}")
    keys = ("SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    topology = "".join(f" {k}={hw[k]}" for k in keys) if cpus is None and all(k in hw for k in keys) else ""
    conf_path = os.path.join(state_dir, "slurm.conf")
    with open(conf_path, "w") as f:
        f.write(SLURM_CONF_TEMPLATE.format(
            node=node, addr="127.0.0.1", ctld_port=_free_port(), slurmd_port=_free_port(), munge_socket=munge_socket,
            cred_expire=max(5, cred_expire), state=state_dir, cpus=ncpus, topology=topology, memory_mb=mem,
            mem_per_cpu=max(1, mem // ncpus), partition=PARTITION, min_job_age=min_job_age,
            select_params=select_params, sched_type=sched_type, sched_params=sched_params))

    cluster = Cluster(conf_path=conf_path, node=node, cpus=ncpus, memory_mb=mem, state_dir=state_dir, owned=True)
    env = dict(os.environ, SLURM_CONF=conf_path)
    log = os.path.join(state_dir, "log")
    commands = {
        "munged": [which("munged") or "munged", "-F", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                   f"--log-file={log}/munged.log", f"--pid-file={munge_dir}/munged.pid",
                   f"--seed-file={munge_dir}/munged.seed", "--num-threads=4"],
        # -c: a fresh controller state (no jobs of an earlier start), -i: ignore unreadable state files
        "slurmctld": [which("slurmctld") or "slurmctld", "-D", "-c", "-i", "-f", conf_path],
        "slurmd": [which("slurmd") or "slurmd", "-D", "-N", node, "-f", conf_path],
    }
    try:
        for name, cmd in commands.items():
            _spawn(cluster, name, cmd, env, os.path.join(log, f"{name}.out"))
            if name == "munged":
                _wait_for(lambda: os.path.exists(munge_socket), 15, cluster, "munged's socket")
            elif name == "slurmctld":
                _wait_for(lambda: _answers(cluster.env), timeout, cluster, "slurmctld to answer")
        _wait_for(lambda: _node_state(cluster) == "idle", timeout, cluster, f"node {node} to be idle")
        if watchdog:
            me = os.getpid()
            _spawn(cluster, "watchdog", [sys.executable, os.path.abspath(__file__), "watch", state_dir, str(me),
                                         str(_start_time(me))], env, os.path.join(log, "watchdog.out"))
    except BaseException:
        cluster.stop(grace=3)
        raise
    return cluster


def _spawn(cluster: Cluster, name: str, cmd: list[str], env: dict[str, str], out_path: str) -> None:
    with open(out_path, "ab") as out:
        # a session of its own: a Ctrl-C to the test run's process group does not reach the daemons
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, cwd=cluster.state_dir)
    cluster._procs[name] = proc
    cluster.pids[name] = proc.pid
    cluster._starts[name] = _start_time(proc.pid)
    _record(cluster)


def _node_state(cluster: Cluster) -> str:
    try:
        return cluster.run("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%T", timeout=20).stdout.strip()
    except subprocess.TimeoutExpired:
        return ""


def _wait_for(cond: Callable[[], bool], timeout: float, cluster: Cluster, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in cluster._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}\n{cluster.logs()}")
        if cond():
            return
        if time.monotonic() > deadline:
            extra = f" (node state: {_node_state(cluster)!r})" if "idle" in what else ""
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}{extra}\n{cluster.logs()}")
        time.sleep(0.1)


def status(state_dir: str) -> str:
    """A line per process recorded under state_dir, and sinfo's answer."""
    cluster = _load_recorded(os.path.abspath(state_dir))
    if cluster is None:
        return "not running"
    lines = [f"{n}: pid {p} {'alive' if _alive(p, cluster._starts.get(n)) else 'gone'}" for n, p in cluster.pids.items()]
    res = cluster.run("sinfo", "-h", "-o", "%P %a %l %D %c %m %G %T")
    lines += [f"SLURM_CONF={cluster.conf_path}", f"sinfo: {res.stdout.strip() or res.stderr.strip()}"]
    return "\n".join(lines)


def stop(state_dir: str) -> None:
    """Stop the cluster recorded under state_dir (started by `start` in this or another process)."""
    cluster = _load_recorded(os.path.abspath(state_dir))
    if cluster is not None:
        cluster.stop()


def _watch(state_dir: str, owner: int, owner_start: str) -> None:
    """The watchdog: once `owner` is gone, stop the cluster recorded under state_dir; end when it is stopped."""
    path = os.path.join(state_dir, _PIDS_FILE)
    while os.path.exists(path):
        if not _alive(owner, None if owner_start == "None" else owner_start):
            stop(state_dir)
            return
        time.sleep(1)


# ------------------------------------------------------------------------------------------------ self-check


def selfcheck(state_dir: str) -> None:
    """Start a cluster under state_dir, check what the module doc states, print timings, stop it."""
    import tempfile

    failures: list[str] = []

    def ok(cond: object, what: str) -> None:
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    def gone(jid: str, limit: float = 60) -> float:
        t0 = time.monotonic()
        while c.run("squeue", "-h", "-j", jid, "-o", "%i").stdout.strip():
            if time.monotonic() - t0 > limit:
                raise RuntimeError(f"job {jid} still queued after {limit} s")
            time.sleep(0.05)
        return time.monotonic() - t0

    def sbatch(*args: str) -> str:
        res = c.run("sbatch", "--parsable", "-D", work, *args)
        if res.returncode:
            raise RuntimeError(res.stderr)
        return res.stdout.strip()

    def job_field(jid: str, key: str) -> str:
        out = c.run("scontrol", "show", "job", "-o", jid).stdout
        return next((kv.split("=", 1)[1] for kv in out.split() if kv.startswith(key + "=")), "")

    def read(name: str) -> str:
        try:
            with open(os.path.join(work, name)) as f:
                return f.read()
        except OSError:
            return ""

    t0 = time.monotonic()
    problem = ensure_installed()
    if problem:
        raise SystemExit(problem)
    print(f"ensure_installed: {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    c = start(state_dir, reuse_env=False)
    print(f"start: {time.monotonic() - t0:.1f} s  node={c.node} cpus={c.cpus} mem={c.memory_mb} MB conf={c.conf_path}")
    work = tempfile.mkdtemp(prefix="slurm-selfcheck-", dir="/tmp")
    try:
        print("sinfo:", c.run("sinfo", "-h", "-o", "%P %a %l %D %c %m %G").stdout.strip())
        print("scontrol show node -o:", c.run("scontrol", "show", "node", "-o", c.node).stdout.strip())
        jid = sbatch("--array=0-3%2", "-o", "slurm-%A_%a.out", "--wrap",
                     "echo $SLURM_ARRAY_TASK_ID > out.$SLURM_ARRAY_TASK_ID; env | sort > env.$SLURM_ARRAY_TASK_ID")
        ok(jid.isdigit(), f"sbatch --parsable prints the bare job id ({jid!r})")
        took = gone(jid)
        ok(sorted(read(f"out.{i}").strip() for i in range(4)) == ["0", "1", "2", "3"],
           f"array 0-3%2 ran every element ({took:.1f} s)")
        env1 = dict(line.split("=", 1) for line in read("env.1").splitlines() if "=" in line)
        keys = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_CONF")
        print("  element 1 env:", {k: env1.get(k) for k in keys})
        ok(env1.get("SLURM_ARRAY_JOB_ID") == jid and env1.get("SLURM_ARRAY_TASK_ID") == "1",
           "SLURM_ARRAY_JOB_ID is the array's id, SLURM_ARRAY_TASK_ID the index")
        ok("SLURM_RESTART_COUNT" not in env1, "SLURM_RESTART_COUNT is unset before any requeue")
        print("  squeue -t all after the end:",
              c.run("squeue", "-h", "-j", jid, "-t", "all", "-o", "%i %A %F %K %T %r").stdout.splitlines()[:2])
        ok(job_field(f"{jid}_2", "JobState") == "COMPLETED", "scontrol show job ID_IDX after the end: COMPLETED")
        ok(c.run("sacct", "-j", jid).returncode != 0, "sacct fails (accounting storage is disabled)")
        a = sbatch("-o", "/dev/null", "--wrap", "sleep 1; echo A > dep.a")
        b = sbatch("-o", "/dev/null", f"--dependency=afterok:{a}", "--wrap", "cat dep.a > dep.b")
        f = sbatch("-o", "/dev/null", "--wrap", "exit 3")
        g = sbatch("-o", "/dev/null", f"--dependency=afterok:{f}", "--wrap", "true")
        gone(b)
        ok(read("dep.b") == "A\n", "afterok chains (B ran after A)")
        gone(f)
        time.sleep(1.5)
        ok(job_field(f, "JobState") == "FAILED" and job_field(f, "ExitCode") == "3:0", "exit 3: FAILED, ExitCode=3:0")
        ok(job_field(g, "Reason") == "DependencyNeverSatisfied", "afterok on a failed job: DependencyNeverSatisfied")
        c.run("scancel", g)
        jid = sbatch("--array=0-2", "-o", "/dev/null", "--wrap", "sleep 30")
        while not c.run("squeue", "-h", "-j", f"{jid}_1", "-t", "R", "-o", "%i").stdout.strip():
            time.sleep(0.05)
        c.run("scancel", f"{jid}_1")
        time.sleep(1.5)
        ok(job_field(f"{jid}_1", "JobState") == "CANCELLED", "scancel ID_1 cancelled that running element")
        ok(job_field(f"{jid}_0", "JobState") == "RUNNING", "the other elements go on")
        c.run("scancel", jid)
        gone(jid)
        jid = sbatch("-n", "2", "-o", "srun.out", "--wrap", "srun -n 2 bash -c 'echo $SLURM_PROCID'")
        gone(jid)
        ok(sorted(read("srun.out").split()) == ["0", "1"], "srun -n 2 in sbatch -n 2: SLURM_PROCID 0 and 1")
        jid = sbatch("--requeue", "--open-mode=append", "-o", "rq.out", "--wrap",
                     "echo restart=${SLURM_RESTART_COUNT:-unset}; sleep 30")
        while "restart=unset" not in read("rq.out"):
            time.sleep(0.05)
        t0 = time.monotonic()
        ok(c.run("scontrol", "requeue", jid).returncode == 0, "scontrol requeue")
        while "restart=1" not in read("rq.out") and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        ok("restart=1" in read("rq.out"),
           f"the requeued job ran again with SLURM_RESTART_COUNT=1 ({time.monotonic() - t0:.1f} s after requeue)")
        c.run("scancel", jid)
        gone(jid)
        for n in (1, 10):
            jid = sbatch("-o", "/dev/null", *(["--array=0-9"] if n == 10 else []), "--wrap", "true")
            print(f"  {n} x true: {gone(jid):.2f} s from sbatch to gone from squeue")
    finally:
        t0 = time.monotonic()
        c.stop()
        print(f"stop: {time.monotonic() - t0:.1f} s")
        shutil.rmtree(work, ignore_errors=True)
    print("selfcheck:", "FAILED: " + "; ".join(failures) if failures else "all ok")
    if failures:
        raise SystemExit(1)


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "watch":
        _watch(argv[1], int(argv[2]), argv[3])
        return 0
    if len(argv) != 2 or argv[0] not in ("start", "stop", "status", "selfcheck"):
        print("usage: python slurm_cluster.py start|stop|status|selfcheck DIR", file=sys.stderr)
        return 2
    cmd, state_dir = argv
    if cmd == "selfcheck":
        selfcheck(state_dir)
    elif cmd == "start":
        t0 = time.monotonic()
        cluster = start(state_dir, reuse_env=False, watchdog=False)  # lives on after this process: `stop DIR`
        print(f"started in {time.monotonic() - t0:.1f} s; export SLURM_CONF={cluster.conf_path}")
    elif cmd == "stop":
        stop(state_dir)
    else:
        print(status(state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
