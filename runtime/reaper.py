"""Ties the processes a local Ray starts to the life of the driver that started them.

    reaper = Reaper.start(temp_dir)     # before ray.init(_temp_dir=temp_dir)
    ray.init(...)
    reaper.watch(descendants())         # Ray's processes (GCS, raylet, dashboard, ...), sent down a pipe

`python -m runtime.reaper <temp_dir>` runs in its own session (Ctrl-C in a terminal does not reach
it) and reads process ids from stdin. When stdin closes, because the driver ended however it ended
(SIGKILL included: the kernel closes its end of the pipe), it ends those processes and their children
(SIGTERM, then SIGKILL after a grace period) and removes the Ray temp folder (session files, logs,
sockets), so a local run leaves nothing behind. After a clean `ray.shutdown()` there is nothing left
to end and it only removes the folder.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Iterable

import psutil

GRACE_S = 5.0
"""How long SIGTERM'd processes get before SIGKILL."""


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one)."""
    try:
        return [p.pid for p in psutil.Process(pid or os.getpid()).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Reaper:
    """The driver's side: a pipe to the reaper process."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._pipe: IO[str] = proc.stdin  # type: ignore[assignment]

    @classmethod
    def start(cls, temp_dir: str | Path) -> "Reaper":
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([sys.executable, "-m", "runtime.reaper", str(temp_dir)], stdin=subprocess.PIPE,
                                text=True, start_new_session=True, env=env, stdout=subprocess.DEVNULL)
        return cls(proc)

    def watch(self, pids: Iterable[int]) -> None:
        """Processes to end (with their children) when this process ends."""
        mine = {self.proc.pid}
        try:
            self._pipe.write("".join(f"{p}\n" for p in pids if p not in mine))
            self._pipe.flush()
        except (BrokenPipeError, ValueError):   # the reaper is gone (or the pipe closed): nothing to tell
            pass


def _end(watched: list[psutil.Process]) -> None:
    procs: dict[int, psutil.Process] = {}
    for p in watched:
        try:   # psutil checks that the pid is still the process it was (creation time): not a reused one
            for q in [p, *p.children(recursive=True)]:
                procs[q.pid] = q
        except psutil.NoSuchProcess:
            continue
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=GRACE_S)


def main(argv: list[str]) -> None:
    temp_dir = Path(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the driver's Ctrl-C is the driver's to handle
    # Each pid is bound to its process (psutil keeps its creation time) when it arrives, while the process
    # runs: by the end it may have exited and the pid gone to a process of someone else (pid_max can be
    # 32768: pids come round in minutes on a busy machine), which must not be ended.
    watched: list[psutil.Process] = []
    for line in sys.stdin:
        if line.strip().isdigit():
            try:
                watched.append(psutil.Process(int(line)))
            except psutil.NoSuchProcess:
                continue
    _end(watched)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
