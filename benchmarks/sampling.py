"""What the processes of a benchmark use, sampled on a thread while it runs (with psutil):
the resident set (RSS) and the proportional set (PSS) summed over a process tree, and the CPU
time of each kind of process (clients, the simulation, the SuperLink, ...)."""

from __future__ import annotations

import threading
import time

import psutil

from launcher.processes import descendants


class Poller:
    """Calls :meth:`sample` every ``interval`` seconds on a thread of its own while in a ``with``."""

    interval: float

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        raise NotImplementedError


class TreeMemory(Poller):
    """Samples, every ``interval`` seconds, the resident set (RSS) and the proportional set
    (PSS: shared pages divided among the processes that share them) summed over every
    descendant of ``root`` (the root itself only with ``include_root``); keeps the peaks."""

    def __init__(self, root: int, include_root: bool = False, interval: float = 0.2) -> None:
        self.root, self.include_root, self.interval = root, include_root, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self.peak_names: list[str] = []
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds so far)
        self.started = time.perf_counter()
        self.first_seen: dict[str, float] = {}  # role -> seconds after start when a process of it appeared
        self.lived: dict[int, tuple[float, float]] = {}  # pid -> (started, last seen), epoch seconds
        # Processes whose memory is also summed on its own (a deployment's nodes): roots, set while sampling.
        self.group_roots: list[int] = []
        self.peak_group_rss = self.peak_group_pss = 0
        super().__init__()

    def sample(self) -> None:
        pids = [self.root, *descendants(self.root)] if self.include_root else descendants(self.root)
        group = set(self.group_roots) | set(descendants(*self.group_roots)) if self.group_roots else set()
        rss = pss = group_rss = group_pss = 0
        names = []
        for pid in pids:
            try:
                process = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue  # gone since the tree was read
            with process.oneshot():
                r, p = memory_of(process)
                seconds = cpu_seconds(process)
                rss, pss = rss + r, pss + p
                if pid in group:
                    group_rss, group_pss = group_rss + r, group_pss + p
                names.append(f"{name_of(process)} {r / 1e6:.0f}/{p / 1e6:.0f} MB")
                if seconds is not None:  # the role as last seen: a Ray worker becomes an actor after it starts
                    role = role_of(process)
                    if role == "other" and pid in self.cpu:  # an exiting process has no command line left
                        role = self.cpu[pid][0]
                    self.cpu[pid] = (role, seconds)
                    self.first_seen.setdefault(role, time.perf_counter() - self.started)
                    started = self.lived[pid][0] if pid in self.lived else process.create_time()
                    self.lived[pid] = (started, time.time())
        if rss > self.peak_rss:
            self.peak_rss, self.peak_names = rss, names
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_group_rss = max(self.peak_group_rss, group_rss)
        self.peak_group_pss = max(self.peak_group_pss, group_pss)
        self.peak_procs = max(self.peak_procs, len(pids))

    def lifetimes(self, role: str) -> list[float]:
        """Seconds from start to the last sample that saw it, of each process of ``role``, in the
        order they started (at most ``interval`` short): a deployed ClientApp process lives for
        one message, so this is what a message costs on its node, start-up included."""
        lived = sorted(times for pid, times in self.lived.items() if self.cpu[pid][0] == role)
        return [seen - started for started, seen in lived]

    def cpu_of(self, role: str) -> list[float]:
        """CPU seconds of each process of ``role``, in the order they started (as :meth:`lifetimes`)."""
        by_start = sorted(self.cpu.items(), key=lambda item: self.lived.get(item[0], (0.0,))[0])
        return [seconds for _, (r, seconds) in by_start if r == role]

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used by the sampled processes, summed by role (as last sampled)."""
        roles: dict[str, float] = {}
        for role, seconds in self.cpu.values():
            roles[role] = roles.get(role, 0.0) + seconds
        return dict(sorted(roles.items(), key=lambda kv: -kv[1]))


CLIENTAPP_PROCESS = "clients (ClientApp processes)"  # a deployed node's process for one message
FORK_SERVERS = "fork servers (launcher.forkserver)"
# (role, a process name that tells it): a fork server's child is named like Flower's own ClientApp
# process, and the flwr-clientapp that only waits on one renames itself (launcher/warm_clientapp.py).
NAMED = (
    (CLIENTAPP_PROCESS, "flwr-clientapp"),
    ("flwr-clientapp asking a fork server", "flwr-warm-ask"),
)
ROLES = (  # (role, a piece of the command line that tells it)
    ("clients (Ray actors)", "ClientAppActor"),
    (CLIENTAPP_PROCESS, "flwr-clientapp"),
    ("simulation process (ServerApp + Flower runtime)", "flwr-simulation"),
    ("ServerApp process", "flwr-serverapp"),
    (FORK_SERVERS, "launcher.forkserver"),
    ("SuperNodes", "flower-supernode"),
    ("SuperLink, SuperExec", "flower-super"),
    ("flwr CLI", "bin/flwr "),
    ("launcher", "launcher.simulate"),
)


def _process(process: int | psutil.Process) -> psutil.Process:
    return process if isinstance(process, psutil.Process) else psutil.Process(process)


def role_of(process: int | psutil.Process) -> str:
    """What a process is in a Flower run, told by its name (see :data:`NAMED`) or else by its
    command line (see :data:`ROLES`)."""
    name = name_of(process)
    for role, named in NAMED:
        if name == named:
            return role
    try:
        cmdline = " ".join(_process(process).cmdline()) + " "
    except psutil.Error:  # gone, or a zombie: no command line left
        cmdline = ""
    for role, marker in ROLES:
        if marker in cmdline:
            return role
    return "Ray's own processes" if "ray" in cmdline else "other"


def name_of(process: int | psutil.Process) -> str:
    try:
        return _process(process).name()
    except psutil.Error:
        return ""


def cpu_seconds(process: int | psutil.Process) -> float | None:
    """User and system CPU seconds of one process (not its children); None once it is gone."""
    try:
        times = _process(process).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def memory_of(process: int | psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) once it is gone (PSS 0 where the system has none)."""
    try:
        info = _process(process).memory_full_info()
    except psutil.Error:
        return 0, 0
    return info.rss, getattr(info, "pss", 0)
