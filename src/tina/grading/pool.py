"""A persistent grader worker process with per-item timeouts.

Why a plain child process (``subprocess.Popen([python, -m, tina.grading._worker])``) rather than a
``multiprocessing`` pool: it is started by fork+exec, so nothing of the parent (torch threads, CUDA state, locks)
is inherited -- the same guarantee as the "spawn" start method -- but unlike multiprocessing it does not re-import
the parent's ``__main__`` (a training script), and it can be started from inside daemonic multiprocessing workers,
which may not have multiprocessing children. Start-up (imports + a warm-up parse, about 0.4 s on a 2-core box) is
paid once per worker; the worker is reused until it times out, crashes, or `shutdown` is called.

Timeout policy (`run_batch`): a batch is sent in ONE frame; the worker answers item by item, in order. Each item
gets `timeout` seconds, counted from the previous answer (or from the moment the batch was sent). When an item
overruns, the worker is killed (SIGKILL), that item is reported as ``("timeout", None)``, and the rest of the batch
is re-sent to a fresh worker. So one pathological item costs `timeout` plus one worker start-up, and a batch of
n items costs at most about n * `timeout`. A worker that dies mid-item (segfault, out of memory) gives that item
``("error", message)`` and is replaced the same way.

Thread- and process-safety: one worker per process, guarded by a lock (concurrent callers in threads take turns).
After ``os.fork()`` the child drops the inherited handle (it belongs to the parent) and starts its own worker on
first use. The worker is stopped at interpreter exit (atexit), and it exits by itself if its parent dies.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tina.grading._protocol import HEADER, decode_frames

__all__ = ["STARTUP_TIMEOUT", "GraderUnavailableError", "run_batch", "shutdown", "worker_pid"]

log = logging.getLogger(__name__)

# Seconds a new worker may take to import sympy/math-verify and warm up (generous: cold caches on a busy box).
STARTUP_TIMEOUT = 120.0
_SRC_DIR = str(Path(__file__).resolve().parents[2])  # the directory that contains the `tina` package


class GraderUnavailableError(RuntimeError):
    """The grader worker cannot start (broken environment), so nothing can be graded."""


class _Timeout(Exception):
    pass


class _Dead(Exception):
    pass


class _Worker:
    """One child process and its pipes. Not thread-safe; the module lock serialises access."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC_DIR, env.get("PYTHONPATH", "")) if p)
        self.owner_pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tina.grading._worker", str(self.owner_pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=_SRC_DIR,  # `-m` puts the cwd first on sys.path: never let a stray ./tina or ./sympy shadow ours
            close_fds=True,
        )
        self.ready = False
        self._buffer = bytearray()
        self._frames: list[Any] = []
        # selectors (epoll on Linux), not select.select: the pipe fd may be above FD_SETSIZE in a busy trainer
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, obj: Any) -> None:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(HEADER.pack(len(payload)) + payload)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _Dead(f"worker stdin closed: {exc}") from exc

    def recv(self, deadline: float) -> Any:
        """Next frame from the worker; raises _Timeout at `deadline` (time.monotonic()) and _Dead at EOF."""
        fd = self.proc.stdout.fileno()
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if not self._selector.select(remaining):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = self.proc.poll()
                raise _Dead(f"worker exited (return code {code})")
            self._buffer.extend(chunk)
            self._frames.extend(decode_frames(self._buffer))
        return self._frames.pop(0)

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            frame = self.recv(time.monotonic() + STARTUP_TIMEOUT)
        except (_Timeout, _Dead) as exc:
            self.kill()
            raise GraderUnavailableError(
                f"the grader worker ({sys.executable} -m tina.grading._worker) did not start: {exc!r}; "
                "its stderr above says why (is math-verify installed?)"
            ) from exc
        if not (isinstance(frame, tuple) and frame[0] == "ready"):
            self.kill()
            raise GraderUnavailableError(f"the grader worker sent {frame!r} instead of its ready message")
        self.ready = True

    def kill(self) -> None:
        if self.owner_pid != os.getpid():
            return  # inherited through fork: the process belongs to our parent
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def close(self, grace: float = 2.0) -> None:
        """Ask the worker to exit (stdin EOF), kill it if it does not within `grace` seconds."""
        if self.owner_pid != os.getpid():
            return
        self._close_pipes()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _close_pipes(self) -> None:
        self._selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass


_lock = threading.Lock()
_worker: _Worker | None = None


def _current_worker() -> _Worker:
    """The live worker of this process, started if needed (caller holds `_lock`)."""
    global _worker
    if _worker is not None and (_worker.owner_pid != os.getpid() or _worker.proc.poll() is not None):
        _worker.kill()
        _worker = None
    if _worker is None:
        _worker = _Worker()
    return _worker


def _kill_worker() -> None:
    """Kill the current worker, if any (caller holds `_lock`)."""
    global _worker
    if _worker is not None:
        _worker.kill()
    _worker = None


def _discard_worker() -> None:
    """Kill the current worker and start a replacement right away (its start-up overlaps the caller's work)."""
    global _worker
    _kill_worker()
    _worker = _Worker()


def run_batch(items: list[tuple[Any, str, tuple]], timeout: float) -> dict[Any, tuple[str, Any]]:
    """Run ``(key, op, args)`` items in the worker; returns ``{key: (status, payload)}``.

    status is "ok" (payload = the op's result), "error" (payload = message), or "timeout" (payload None).
    Keys must be unique. See the module docstring for the timeout policy.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    results: dict[Any, tuple[str, Any]] = {}
    pending = list(items)
    send_failures = 0
    with _lock:
        while pending:
            worker = _current_worker()
            worker.wait_ready()
            try:
                worker.send(("batch", pending))
            except _Dead as exc:
                # It died while idle (killed from outside?): retry on a fresh worker, but not forever.
                send_failures += 1
                _discard_worker()
                if send_failures >= 3:
                    raise GraderUnavailableError(f"grader workers keep dying before reading a batch: {exc}") from exc
                continue
            done = 0
            try:
                while done < len(pending):
                    key, status, payload = worker.recv(time.monotonic() + timeout)
                    if key != pending[done][0]:
                        raise RuntimeError(f"grader protocol error: expected key {pending[done][0]!r}, got {key!r}")
                    results[key] = (status, payload)
                    done += 1
            except _Timeout:
                results[pending[done][0]] = ("timeout", None)
                _discard_worker()
            except _Dead as exc:
                log.warning("grader worker died on an item: %s", exc)
                results[pending[done][0]] = ("error", f"grader worker died: {exc}")
                _discard_worker()
            except BaseException:
                _kill_worker()  # interrupted mid-batch (Ctrl-C, protocol bug): pipe state unknown, never reuse it
                raise
            pending = pending[done + 1 :]
    return results


def worker_pid() -> int | None:
    """Process id of this process's grader worker (None if not started); for tests and diagnostics."""
    with _lock:
        if _worker is None or _worker.owner_pid != os.getpid():
            return None
        return _worker.proc.pid


def shutdown() -> None:
    """Stop this process's grader worker, if any. Safe to call repeatedly; the next grade() starts a new one."""
    global _worker
    acquired = _lock.acquire(timeout=5.0)
    try:
        if _worker is not None:
            if acquired:
                _worker.close()
            else:  # another thread is stuck mid-batch: do not wait for it
                _worker.kill()
            _worker = None
    finally:
        if acquired:
            _lock.release()


def _after_fork_in_child() -> None:
    """A forked child must not talk to (or kill) its parent's worker: drop it and start afresh on first use."""
    global _lock, _worker
    _lock = threading.Lock()
    inherited, _worker = _worker, None
    if inherited is not None:
        inherited._close_pipes()  # our copies only, so the parent's worker still sees EOF when the parent closes


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
