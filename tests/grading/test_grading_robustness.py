"""Timeouts, pathological inputs, threads, worker processes, crash recovery and clean shutdown."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from tina.grading import Verdict, grade, grade_many, pool, shutdown

TIMEOUT = 1.0
SLACK = 2.0  # the brief: pathological answers return within timeout + 2 s


@pytest.fixture(autouse=True)
def warm_worker():
    """Start the worker before timing anything (start-up is paid once per process, not per call)."""
    assert grade(r"\boxed{x+1}", "1+x").correct is True
    yield


PATHOLOGICAL = [
    r"\boxed{10^{10^{10^{10}}}}",
    r"\boxed{(10^{10})!}",
    r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    r"\boxed{" + r"\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    r"\boxed{\frac{1}{2",
    r"\boxed{" + "1+" * 500_000 + "1}",
    "The answer is $x$. " * 60_000,  # ~1.1 MB
    "\\[ " * 400_000,
]


@pytest.mark.parametrize("completion", PATHOLOGICAL, ids=lambda c: repr(c[:30]) + f"..({len(c)} chars)")
def test_pathological_answers_return_in_time(completion):
    start = time.monotonic()
    verdict = grade(completion, r"\frac{\sqrt{2}}{2}", timeout=TIMEOUT)
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT + SLACK, (elapsed, verdict)
    assert verdict.correct is not True
    assert verdict.reason in {"ok", "timeout", "no_answer", "unfinished"}
    if verdict.extracted is not None:
        assert len(verdict.extracted) <= 1000


# The hedge and think-block scans on adversarial input: many boxes, connectors, letters, tags.
ADVERSARIAL_HEDGES = [  # (completion, gold, task, expected correct; None: not checked)
    (r"\boxed{1} or " * 50_000 + r"\boxed{2}", "2", "math", False),
    (r"\boxed{1}" + " or" * 200_000 + " 2", "1", "math", None),
    (r"\boxed{" + "7 or " * 100_000 + "8}", "8", "math", False),
    (r"\boxed{" + "(" * 100_000 + "7 or 8" + ")" * 100_000 + "}", "8", "math", None),
    ("The answer is " + "$1$ or maybe " * 20_000 + "$2$.", "1", "math", False),
    ("$x$ or " * 100_000, "x", "math", True),  # one value, repeated
    ("<think>" * 100_000 + "</think>" * 100_000 + r"\boxed{3}", "3", "math", True),
    ("</think>" * 200_000, "3", "math", False),
    ("<think>" * 200_000 + r"\boxed{3}", "3", "math", False),
    ("Answer: C" + " or" * 200_000 + " D", "C", "gpqa", None),
    ("(A) or " * 100_000 + "(B)", "B", "gpqa", False),
    (r"\boxed{C" + ", " * 100_000 + "D}", "C", "gpqa", False),
    ("Answer: " + "C/" * 100_000, "C", "gpqa", False),
    ("Answer: C, " + "maybe " * 100_000 + "D", "C", "gpqa", None),
]


@pytest.mark.parametrize(("completion", "gold", "task", "expected"), ADVERSARIAL_HEDGES, ids=lambda x: repr(x)[:24])
def test_hedge_scans_are_fast_on_adversarial_input(completion, gold, task, expected):
    start = time.monotonic()
    verdict = grade(completion, gold, task=task, timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT + SLACK, verdict
    if expected is not None:
        assert verdict.correct is expected, verdict
    if verdict.extracted is not None:
        assert len(verdict.extracted) <= 4 * 1000 + 10


def test_timeout_then_the_rest_of_the_batch_is_still_graded():
    completions = [r"\boxed{\sqrt{8}}", r"\boxed{10^{10^{10^{10}}}}", r"\boxed{\frac{\pi}{4}}", r"\boxed{3}"]
    golds = [r"2\sqrt{2}", r"\sqrt{3}", r"\frac{\pi}{4}", "3"]
    start = time.monotonic()
    verdicts = grade_many(completions, golds, timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT + SLACK + 2.0  # one timeout + one worker restart
    assert [v.correct for v in verdicts] == [True, None, True, True]
    assert verdicts[1] == Verdict(None, "10^{10^{10^{10}}}", "timeout", "boxed")


def test_timeouts_are_not_cached():
    first = grade(r"\boxed{10^{10^{10^{11}}}}", r"\sqrt{5}", timeout=TIMEOUT)
    second = grade(r"\boxed{10^{10^{10^{11}}}}", r"\sqrt{5}", timeout=TIMEOUT)
    assert first.reason == second.reason == "timeout"


def test_grade_from_threads():
    box = {}

    def target():
        box["verdict"] = grade(r"\boxed{\{2,1\}}", r"\{1,2\}")
        box["timeout"] = grade(r"\boxed{10^{10^{10^{12}}}}", r"\sqrt{6}", timeout=TIMEOUT)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert box["verdict"].correct is True
    assert box["timeout"].reason == "timeout"

    with ThreadPoolExecutor(4) as executor:
        results = list(executor.map(lambda k: grade(rf"\boxed{{\frac{{{k}}}{{2}}}}", f"{k / 2}").correct, range(16)))
    assert results == [True] * 16


def _grade_in_child(completion: str, gold: str) -> tuple[Verdict, int | None, int]:
    return grade(completion, gold, timeout=TIMEOUT), pool.worker_pid(), os.getpid()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_grade_inside_process_pool_workers(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available on this platform")
    parent_worker = pool.worker_pid()
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        # a pair this process has not graded yet (a forked child inherits the parent's result cache)
        k = 11 + len(method)
        job = executor.submit(_grade_in_child, rf"\boxed{{\sqrt{{8}}+{k}}}", rf"{k}+2\sqrt2")
        verdict, child_worker, child_pid = job.result(60)
        slow, _, _ = executor.submit(_grade_in_child, r"\boxed{10^{10^{10^{10}}}}", "5").result(60)
    assert verdict.correct is True
    assert child_pid != os.getpid()
    assert child_worker is not None and child_worker != parent_worker  # each process has its own worker
    assert slow.reason == "timeout"
    assert pool.worker_pid() == parent_worker  # the parent's worker was not touched
    assert grade(r"\boxed{\sqrt{8}}", r"2\sqrt2").correct is True


def test_recovers_when_the_worker_is_killed_from_outside():
    pid = pool.worker_pid()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert grade(r"\boxed{\frac{a}{b+1}}", r"\frac{a}{1+b}").correct is True
    assert pool.worker_pid() != pid


def test_worker_death_mid_item_is_a_grader_error():
    victim = pool._worker.proc.pid  # noqa: SLF001 - reading it directly: worker_pid() would wait for the batch
    threading.Timer(0.3, os.kill, args=(victim, signal.SIGKILL)).start()
    verdict = grade(r"\boxed{10^{10^{10^{13}}}}", r"\sqrt{7}", timeout=10.0)
    assert verdict == Verdict(None, "10^{10^{10^{13}}}", "grader_error", "boxed")
    assert grade(r"\boxed{x^2}", "x^{2}").correct is True


def test_shutdown_stops_the_worker_and_grading_restarts():
    pid = pool.worker_pid()
    shutdown()
    assert pool.worker_pid() is None
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # reaped by close(); the pid must be gone
            os.kill(pid, 0)
            time.sleep(0.1)
    shutdown()  # idempotent
    assert grade(r"\boxed{y+2}", "2+y").correct is True


def test_interpreter_exit_is_clean_and_leaves_no_worker():
    src = str(Path(pool.__file__).resolve().parents[2])
    code = "import tina.grading as g, sys\nv = g.grade(r'\\boxed{x+1}', '1+x')\nprint(g.pool.worker_pid(), v.correct)\n"
    env = dict(os.environ, PYTHONPATH=src)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 30
    worker, correct = done.stdout.split()
    assert correct == "True"
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(int(worker), 0)


def test_interrupted_batch_never_reuses_the_worker(monkeypatch):
    old_pid = pool.worker_pid()
    real_recv = pool._Worker.recv  # noqa: SLF001

    def interrupted(self, deadline):
        monkeypatch.setattr(pool._Worker, "recv", real_recv)  # noqa: SLF001 - only the first call is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(pool._Worker, "recv", interrupted)  # noqa: SLF001
    with pytest.raises(KeyboardInterrupt):
        grade(r"\boxed{\frac{z}{3}}", r"\frac{1}{3}z")
    assert pool.worker_pid() is None
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    assert grade(r"\boxed{\frac{z}{3}}", r"\frac{1}{3}z").correct is True
