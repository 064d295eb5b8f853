"""A private one-node Slurm cluster on localhost for tests (stdlib only).

MEASUREMENTS: filled in below after verification.
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
from dataclasses import dataclass, field

#: the programs a cluster needs (clients in /usr/bin, daemons in /usr/sbin on Debian)
NEEDED = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun", "slurmctld", "slurmd", "munged")
PARTITION = "debug"
#: where the daemons may be when PATH lacks the sbin directories (nox sessions, non-login shells)
_EXTRA_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")
_PIDS_FILE = "pids.json"


def which(name: str) -> str | None:
    """`name` on PATH, else in the usual sbin/bin directories."""
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))


def missing() -> list[str]:
    """The programs of NEEDED that cannot be found."""
    return [name for name in NEEDED if which(name) is None]


def ensure_installed(timeout: float = 900) -> str | None:
    """Install Debian's slurm-wlm and munge if a program is missing. None when all are there, else why not."""
    if not missing():
        return None
    lacking = ", ".join(missing())
    apt = which("apt-get")
    if os.geteuid() != 0 or apt is None:
        return f"missing {lacking}: needs root and apt-get to install slurm-wlm and munge"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef",
           "-o", "Dpkg::Options::=--force-confold", "slurm-wlm", "munge"]
    out = ""
    for update_first in (False, True):
        try:
            if update_first:
                subprocess.run([apt, "update", "-q"], env=env, capture_output=True, text=True, timeout=timeout)
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"missing {lacking}: 'apt-get install slurm-wlm munge' did not finish in {timeout:.0f} s"
        out = (res.stdout + res.stderr)[-2000:]
        if res.returncode == 0 and not missing():
            return None
    return f"missing {', '.join(missing()) or lacking}: 'apt-get install slurm-wlm munge' failed:\n{out}"


# ------------------------------------------------------------------------------------------------ helpers


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    exe = which(args[0]) or args[0]
    full = dict(os.environ, **(env or {}))
    return subprocess.run([exe, *args[1:]], env=full, capture_output=True, text=True, timeout=timeout)


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
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a recycled PID from ours."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    now = _start_time(pid)
    if now is None:
        return False
    try:  # a zombie (our own child not yet waited for) is not alive
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return start is None or now == start


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no file)"


# ------------------------------------------------------------------------------------------------ cluster


@dataclass
class Cluster:
    """A running cluster. `env` holds what a client command needs besides os.environ (SLURM_CONF)."""

    conf_path: str
    node: str
    cpus: int
    memory_mb: int
    partition: str = PARTITION
    state_dir: str | None = None
    #: True when this object started the daemons (stop() stops them); False for a reused cluster
    owned: bool = False
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
        """Run a client command (`cluster.run("squeue", "-h")`) against this cluster."""
        return _run(list(args), env=self.env, timeout=timeout)

    def stop(self, grace: float = 10) -> None:
        """Cancel this cluster's jobs, then end the daemons this object (or `start DIR`) started, by PID only."""
        if not self.owned:
            return
        if any(_alive(pid, self._starts.get(name)) for name, pid in self.pids.items()):
            _cancel_all(self)
        # slurmd first (its steps end with their jobs), then the controller, then munge
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.get(name)
            if pid is None:
                continue
            _terminate(pid, self._starts.get(name), grace, self._procs.get(name))
        for proc in self._procs.values():
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        if self.state_dir:  # a job step that outlived its slurmd (scancel did not end it): it and its tasks
            for pid in _leftover_steps(self.state_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.owned = False
        if self.state_dir:
            try:
                os.unlink(os.path.join(self.state_dir, _PIDS_FILE))
            except OSError:
                pass

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cancel_all(cluster: Cluster, wait: float = 8) -> None:
    """scancel every job of this private cluster and wait (bounded) until none is left running."""
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
            time.sleep(0.2)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _leftover_steps(state_dir: str) -> list[int]:
    """The slurmstepd processes of this cluster (cwd or an open file under state_dir), then their descendants.

    slurmstepd double-forks into its own session, so neither slurmd's PID nor its session finds it; it
    inherits slurmd's cwd (state_dir) and keeps slurmd's log file open.
    """
    children: dict[int, list[int]] = {}
    steps = []
    prefix = state_dir.rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"slurmstepd"):
                    continue
            paths = [os.readlink(f"/proc/{pid}/cwd") + "/"]
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    pass
        except (OSError, ValueError, IndexError):
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
    if not _alive(pid, start):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if not _alive(pid, start):
            return
        time.sleep(0.05)
    if _alive(pid, start):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _answers(env: dict[str, str]) -> bool:
    try:
        res = _run(["sinfo", "-h", "-o", "%P"], env=env, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and bool(res.stdout.strip())


def _describe(conf_path: str | None, state_dir: str | None = None, owned: bool = False) -> Cluster:
    """A Cluster object for an already-running cluster (node, cpus, memory, default partition read back)."""
    env = {"SLURM_CONF": conf_path} if conf_path else {}
    node, cpus, mem, part = _short_hostname(), _cpu_count(), 0, PARTITION
    res = _run(["sinfo", "-h", "-o", "%P %N %c %m"], env=env)
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) == 4 and (fields[0].endswith("*") or part == PARTITION):
            part, node = fields[0].rstrip("*"), fields[1]
            try:
                cpus, mem = int(fields[2]), int(fields[3].rstrip("+"))
            except ValueError:
                pass
    if not conf_path:
        conf_path = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    return Cluster(conf_path=conf_path, node=node, cpus=cpus, memory_mb=mem, partition=part,
                   state_dir=state_dir, owned=owned)


def _load_recorded(state_dir: str) -> Cluster | None:
    """The cluster that `start(state_dir)` (maybe in another process) recorded, if its daemons still run."""
    try:
        with open(os.path.join(state_dir, _PIDS_FILE)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    pids = {k: int(v) for k, v in rec["pids"].items()}
    starts = rec.get("starts", {})
    cluster = Cluster(conf_path=rec["conf_path"], node=rec["node"], cpus=rec["cpus"], memory_mb=rec["memory_mb"],
                      partition=rec.get("partition", PARTITION), state_dir=state_dir, owned=True,
                      pids=pids, _starts=starts)
    if not any(_alive(pid, starts.get(name)) for name, pid in pids.items()):
        os.unlink(os.path.join(state_dir, _PIDS_FILE))
        return None
    return cluster


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
# no cgroups (containers, VMs without systemd): track processes by parentage, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
LaunchType=launch/slurm
SelectType=select/cons_tres
SelectTypeParameters={select_params}
DefMemPerCPU={mem_per_cpu}
SlurmdParameters=config_overrides
ReturnToService=2
# timing: fast scheduling and cleanup for tests
SchedulerType={sched_type}
SchedulerParameters={sched_params}
MessageTimeout=5
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
KillWait=1
OverTimeLimit=0
CompleteWait=0
MinJobAge={min_job_age}
MaxArraySize=1001
WaitTime=0
TmpFS=/tmp
NodeName={node} NodeAddr={addr} NodeHostname={node} CPUs={cpus}{topology} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


SCHED_TYPE = "sched/backfill"
SCHED_PARAMS = "sched_interval=1,batch_sched_delay=0,bf_interval=1,bf_resolution=1,bf_continue"


def start(state_dir: str, timeout: float = 60, reuse_env: bool = True, cpus: int | None = None,
          memory_mb: int | None = None, min_job_age: int = 600, select_params: str = "CR_Core_Memory",
          sched_type: str = SCHED_TYPE, sched_params: str = SCHED_PARAMS, cred_expire: int = 5) -> Cluster:
    """Start munged, slurmctld and slurmd for a private cluster under `state_dir`; return once the node is idle.

    Reuses, without starting anything (its stop() then does nothing): a cluster this state_dir already
    runs (`python slurm_cluster.py start DIR`), or, with reuse_env, the one SLURM_CONF names when sinfo
    answers. Raises RuntimeError (with the daemons' log tails) when a daemon dies or the node is not
    idle within `timeout` seconds; the daemons started so far are stopped first.
    """
    state_dir = os.path.abspath(state_dir)
    recorded = _load_recorded(state_dir)
    if recorded is not None and _answers(recorded.env):
        recorded.owned = False  # another process started it: that one (or `stop DIR`) stops it
        return recorded
    if reuse_env and os.environ.get("SLURM_CONF") and _answers({}):
        return _describe(os.environ["SLURM_CONF"])
    problem = ensure_installed()
    if problem:
        raise RuntimeError(problem)

    for sub in ("", "ctld", "slurmd", "log", "munge"):
        os.makedirs(os.path.join(state_dir, sub), exist_ok=True)
    os.chmod(state_dir, 0o755)
    munge_dir = os.path.join(state_dir, "munge")
    os.chmod(munge_dir, 0o700)
    key = os.path.join(munge_dir, "munge.key")
    if not os.path.exists(key):  # our own key, so that munged may run as us (the key's owner), mode 0400
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
    munge_socket = os.path.join(munge_dir, "munge.socket")

    hw = _hardware()
    node = hw.get("NodeName") or _short_hostname()
    ncpus = cpus or int(hw.get("CPUs") or _cpu_count())
    real = int(hw.get("RealMemory") or _mem_total_mb())
    topology = ""
    if cpus is None and all(k in hw for k in ("SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")):
        topology = " ".join(["", *(f"{k}={hw[k]}" for k in ("SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"))])
    mem = memory_mb or max(256, min(real - 1024, int(real * 0.9)))
    conf_path = os.path.join(state_dir, "slurm.conf")
    conf = SLURM_CONF_TEMPLATE.format(
        node=node, addr="127.0.0.1", ctld_port=_free_port(), slurmd_port=_free_port(), munge_socket=munge_socket,
        state=state_dir, cpus=ncpus, memory_mb=mem, mem_per_cpu=max(1, mem // ncpus), partition=PARTITION,
        min_job_age=min_job_age, select_params=select_params, topology=topology, sched_type=sched_type,
        sched_params=sched_params, cred_expire=cred_expire)
    with open(conf_path, "w") as f:
        f.write(conf)

    cluster = Cluster(conf_path=conf_path, node=node, cpus=ncpus, memory_mb=mem, state_dir=state_dir, owned=True)
    env = dict(os.environ, SLURM_CONF=conf_path)
    log = os.path.join(state_dir, "log")
    commands = {
        "munged": [which("munged") or "munged", "-F", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                   f"--log-file={log}/munged.log", f"--pid-file={munge_dir}/munged.pid",
                   f"--seed-file={munge_dir}/munged.seed", "--num-threads=4"],
        "slurmctld": [which("slurmctld") or "slurmctld", "-D", "-c", "-i", "-f", conf_path],
        "slurmd": [which("slurmd") or "slurmd", "-D", "-N", node, "-f", conf_path],
    }
    try:
        for name, cmd in commands.items():
            with open(os.path.join(log, f"{name}.out"), "ab") as out:
                proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                        start_new_session=True, cwd=state_dir)
            cluster._procs[name] = proc
            cluster.pids[name] = proc.pid
            cluster._starts[name] = _start_time(proc.pid)
            _record(cluster)
            if name == "munged":
                _wait_for(lambda: os.path.exists(munge_socket), 10, cluster, "munged's socket")
            elif name == "slurmctld":
                _wait_for(lambda: _answers(cluster.env), timeout, cluster, "slurmctld to answer")
        _wait_for(lambda: _node_state(cluster) == "idle", timeout, cluster, f"node {node} to be idle")
    except BaseException:
        cluster.stop(grace=3)
        raise
    return cluster


def _hardware() -> dict[str, str]:
    """`slurmd -C`: what slurmd will find (NodeName, CPUs, SocketsPerBoard, ..., RealMemory)."""
    try:
        res = _run(["slurmd", "-C"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    first = res.stdout.splitlines()[0] if res.returncode == 0 and res.stdout else ""
    return dict(kv.split("=", 1) for kv in first.split() if "=" in kv)


def _record(cluster: Cluster) -> None:
    assert cluster.state_dir
    rec = {"conf_path": cluster.conf_path, "node": cluster.node, "cpus": cluster.cpus, "memory_mb": cluster.memory_mb,
           "partition": cluster.partition, "pids": cluster.pids, "starts": cluster._starts}
    tmp = os.path.join(cluster.state_dir, _PIDS_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(cluster.state_dir, _PIDS_FILE))


def _node_state(cluster: Cluster) -> str:
    try:
        res = cluster.run("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%T", timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    return res.stdout.strip()


def _wait_for(cond: object, timeout: float, cluster: Cluster, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in cluster._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}\n{_logs(cluster)}")
        if cond():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            extra = f" (node state: {_node_state(cluster)!r})" if "idle" in what else ""
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}{extra}\n{_logs(cluster)}")
        time.sleep(0.1)


def _logs(cluster: Cluster) -> str:
    assert cluster.state_dir
    log = os.path.join(cluster.state_dir, "log")
    parts = []
    for name in ("munged.log", "munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out"):
        parts.append(f"--- {name}:\n{_tail(os.path.join(log, name))}")
    return "\n".join(parts)


def status(state_dir: str) -> str:
    """A line per daemon recorded under state_dir, and sinfo's answer."""
    cluster = _load_recorded(os.path.abspath(state_dir))
    if cluster is None:
        return "not running"
    lines = [f"{n}: pid {p} {'alive' if _alive(p, cluster._starts.get(n)) else 'gone'}" for n, p in cluster.pids.items()]
    res = cluster.run("sinfo", "-h", "-o", "%P %a %l %D %c %m %G %T")
    lines.append(f"SLURM_CONF={cluster.conf_path}")
    lines.append(f"sinfo: {res.stdout.strip() or res.stderr.strip()}")
    return "\n".join(lines)


def stop(state_dir: str) -> None:
    """Stop the cluster recorded under state_dir (started by `start` in this or another process)."""
    cluster = _load_recorded(os.path.abspath(state_dir))
    if cluster is not None:
        cluster.stop()


def selfcheck(state_dir: str) -> None:
    """Start a cluster under state_dir, check what the module docstring states, print timings, stop it."""
    import tempfile

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

    failures: list[str] = []
    t0 = time.monotonic()
    problem = ensure_installed()
    if problem:
        raise SystemExit(problem)
    print(f"installed check/install: {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    c = start(state_dir, reuse_env=False)
    print(f"start: {time.monotonic() - t0:.1f} s  node={c.node} cpus={c.cpus} mem={c.memory_mb} MB conf={c.conf_path}")
    work = tempfile.mkdtemp(prefix="slurm-selfcheck-", dir="/tmp")
    try:
        print("sinfo:", c.run("sinfo", "-h", "-o", "%P %a %l %D %c %m %G").stdout.strip())
        print("scontrol show node -o:", c.run("scontrol", "show", "node", "-o", c.node).stdout.strip())
        # an array with a throttle; %a in --wrap is NOT expanded (only in -o/-e file names)
        jid = sbatch("--array=0-3%2", "-o", "slurm-%A_%a.out", "--wrap",
                     "echo $SLURM_ARRAY_TASK_ID > out.$SLURM_ARRAY_TASK_ID; env | grep ^SLURM_ | sort > env.$SLURM_ARRAY_TASK_ID")
        ok(jid.isdigit(), f"sbatch --parsable prints the bare job id ({jid!r})")
        took = gone(jid)
        outs = sorted(open(os.path.join(work, f"out.{i}")).read().strip() for i in range(4))
        ok(outs == ["0", "1", "2", "3"], f"array 0-3%2 ran every element ({took:.1f} s)")
        env1 = dict(line.split("=", 1) for line in open(os.path.join(work, "env.1")).read().splitlines() if "=" in line)
        keys = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_CONF")
        print("  element 1 env:", {k: env1.get(k) for k in keys})
        ok(env1.get("SLURM_ARRAY_JOB_ID") == jid and env1.get("SLURM_ARRAY_TASK_ID") == "1",
           "SLURM_ARRAY_JOB_ID is the array's id, SLURM_ARRAY_TASK_ID the index")
        ok("SLURM_RESTART_COUNT" not in env1, "SLURM_RESTART_COUNT is unset before any requeue")
        # after the end: squeue -t all and scontrol show job keep the record for MinJobAge
        print("  squeue -t all after the end:", c.run("squeue", "-h", "-j", jid, "-t", "all", "-o", "%i %A %F %K %T %r").stdout.split("\n")[:2])
        ok(job_field(f"{jid}_2", "JobState") == "COMPLETED", "scontrol show job ID_IDX after the end: JobState=COMPLETED")
        ok(c.run("sacct", "-j", jid).returncode != 0, "sacct fails (accounting storage is disabled)")
        # dependency chain, and a failed dependency left pending forever
        a = sbatch("-o", "/dev/null", "--wrap", "sleep 1; echo A > dep.a")
        b = sbatch("-o", "/dev/null", f"--dependency=afterok:{a}", "--wrap", "cat dep.a > dep.b")
        f = sbatch("-o", "/dev/null", "--wrap", "exit 3")
        g = sbatch("-o", "/dev/null", f"--dependency=afterok:{f}", "--wrap", "true")
        gone(b)
        ok(open(os.path.join(work, "dep.b")).read() == "A\n", "afterok chains (B ran after A)")
        time.sleep(2)
        ok(job_field(f, "JobState") == "FAILED" and job_field(f, "ExitCode") == "3:0", "exit 3: FAILED, ExitCode=3:0")
        ok(job_field(g, "Reason") == "DependencyNeverSatisfied", "afterok on a failed job: pending, DependencyNeverSatisfied")
        c.run("scancel", g)
        # scancel of one running element
        jid = sbatch("--array=0-2", "-o", "/dev/null", "--wrap", "sleep 30")
        t0 = time.monotonic()
        while c.run("squeue", "-h", "-j", f"{jid}_1", "-t", "R", "-o", "%i").stdout.strip() == "":
            time.sleep(0.05)
        c.run("scancel", f"{jid}_1")
        time.sleep(1.5)
        ok(job_field(f"{jid}_1", "JobState") == "CANCELLED", "scancel ID_1 cancelled that running element")
        ok(job_field(f"{jid}_0", "JobState") == "RUNNING", "the other elements go on")
        c.run("scancel", jid)
        gone(jid)
        # srun inside sbatch -n 2
        jid = sbatch("-n", "2", "-o", "srun.out", "--wrap", "srun -n 2 bash -c 'echo $SLURM_PROCID'")
        gone(jid)
        ok(sorted(open(os.path.join(work, "srun.out")).read().split()) == ["0", "1"], "srun -n 2 in sbatch -n 2: PROCID 0 and 1")
        # requeue: SLURM_RESTART_COUNT, and how long until it runs again (AuthInfo cred_expire)
        jid = sbatch("--requeue", "--open-mode=append", "-o", "rq.out", "--wrap",
                     "echo restart=${SLURM_RESTART_COUNT:-unset}; sleep 30")
        while job_field(jid, "JobState") != "RUNNING":
            time.sleep(0.05)
        time.sleep(0.5)
        t0 = time.monotonic()
        ok(c.run("scontrol", "requeue", jid).returncode == 0, "scontrol requeue")
        while "restart=1" not in open(os.path.join(work, "rq.out")).read():
            if time.monotonic() - t0 > 60:
                break
            time.sleep(0.1)
        took = time.monotonic() - t0
        ok("restart=1" in open(os.path.join(work, "rq.out")).read(), f"requeued job ran again with SLURM_RESTART_COUNT=1 ({took:.1f} s after requeue)")
        c.run("scancel", jid)
        gone(jid)
        # scheduling latency
        for n in (1, 10):
            t0 = time.monotonic()
            jid = sbatch("-o", "/dev/null", *(["--array=0-9"] if n == 10 else []), "--wrap", "true")
            print(f"  {n} x true: {gone(jid):.2f} s from sbatch to all done")
    finally:
        t0 = time.monotonic()
        c.stop()
        print(f"stop: {time.monotonic() - t0:.1f} s")
        shutil.rmtree(work, ignore_errors=True)
    print("selfcheck:", "FAILED: " + "; ".join(failures) if failures else "all ok")
    if failures:
        raise SystemExit(1)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop", "status", "selfcheck"):
        print("usage: python slurm_cluster.py start|stop|status|selfcheck DIR", file=sys.stderr)
        return 2
    cmd, state_dir = argv
    if cmd == "selfcheck":
        selfcheck(state_dir)
    elif cmd == "start":
        t0 = time.monotonic()
        cluster = start(state_dir, reuse_env=False)
        cluster.owned = True  # started for the shell: `stop DIR` ends it
        print(f"started in {time.monotonic() - t0:.1f} s; export SLURM_CONF={cluster.conf_path}")
    elif cmd == "stop":
        stop(state_dir)
    else:
        print(status(state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
