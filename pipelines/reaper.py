"""Nothing of a run outlives its driver: a small watcher process that ends what the run's local Ray
cluster left behind when the driver dies without cleaning up (``kill -9``, the OOM killer).

Ray's local cluster shares the driver's fate only in part: GCS, raylet and the workers go with the
driver, but the node's two agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) lose their
parent and then spend minutes trying to report to a GCS that is gone. The driver starts this watcher
before ``ray.init`` and sends it the PIDs of the processes ``ray.init`` started. The watcher follows
their process trees while the driver lives; when the driver is gone (its end of the pipe closes, also
after a normal shutdown) it sends SIGTERM to every process of those trees still alive, then SIGKILL
after a grace period. A PID is only signalled if it still belongs to the process first seen (same
start time), so a reused PID is never hit. Linux only (it reads /proc); elsewhere it is not started.

Run as ``python -m pipelines.reaper``; the protocol on stdin is one ``track PID`` line per root.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a live process, None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                kids.setdefault(st[0], []).append(int(entry.name))
    return kids


def child_pids(pid: int) -> set[int]:
    """Direct children of ``pid`` now (the driver uses it to see what ``ray.init`` started)."""
    if not Path("/proc").is_dir():
        return set()
    return set(_children_map().get(pid, []))


def _walk(roots: dict[int, int], known: dict[int, int]) -> None:
    """Add every live process of the trees under ``roots`` to ``known`` (pid -> start time)."""
    kids = _children_map()
    stack = [p for p, t in roots.items() if (_stat(p) or (0, -1))[1] == t]
    while stack:
        p = stack.pop()
        st = _stat(p)
        if st is None:
            continue
        known.setdefault(p, st[1])
        stack.extend(kids.get(p, []))


def _alive(known: dict[int, int]) -> list[int]:
    return [p for p, t in known.items() if (_stat(p) or (0, -1))[1] == t]


def watch(stream, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> int:
    """Track the roots named on ``stream`` until it closes; then end what is left. Returns how many
    processes had to be signalled."""
    roots: dict[int, int] = {}
    known: dict[int, int] = {}
    fd = stream.fileno()
    buf = b""
    while True:
        ready, _, _ = select.select([fd], [], [], poll_s)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # the driver is gone, or closed the pipe after its own shutdown
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parts = line.split()
                if len(parts) == 2 and parts[0] == b"track" and parts[1].isdigit():
                    st = _stat(int(parts[1]))
                    if st is not None:
                        roots[int(parts[1])] = st[1]
        _walk(roots, known)
    _walk(roots, known)
    left = _alive(known)
    for p in left:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while _alive(known) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in _alive(known):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return len(left)


class Reaper:
    """The driver's handle on its watcher process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        if not Path("/proc/self/stat").exists():
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or a kill of the driver's process group must not end it first
            cwd=str(Path(__file__).resolve().parent.parent),
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def track(self, pids: set[int]) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(b"".join(b"track %d\n" % p for p in sorted(pids)))
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def close(self, wait_s: float = GRACE_S + 2) -> None:
        """After a clean shutdown: let it end stragglers now, and wait for it."""
        if self._proc is None:
            return
        try:
            if self._proc.stdin:
                self._proc.stdin.close()
            self._proc.wait(timeout=wait_s)
        except (subprocess.TimeoutExpired, OSError):
            self._proc.kill()
        self._proc = None


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is for the driver
    watch(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
