"""Run ``tina`` but SIGKILL this process right after samples.jsonl received its N-th batch of finished problems.

    python tests/eval/kill_after.py N eval --model ... --output-dir OUT

A real, uncatchable kill in the middle of a benchmark (the test then resumes the evaluation with ``--resume``); the
flush size is lowered to 4 problems so the kill lands between batches of a benchmark.  Nothing in ``tina`` is patched
beyond these two test hooks.
"""

import os
import signal
import sys

from tina.eval import runner, samples

kill_after = int(sys.argv[1])
runner.Session.FLUSH_UNITS = 4
_add = samples.SampleLog.add
calls = {"n": 0}


def add(self, records):
    _add(self, records)
    calls["n"] += 1
    if calls["n"] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)


samples.SampleLog.add = add

if __name__ == "__main__":
    from tina.cli import main

    sys.exit(main(sys.argv[2:]))
