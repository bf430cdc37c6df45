"""The run's lifecycle helpers (tina.run): train.logging_steps windows for the trackers."""

from __future__ import annotations

from tina.records import window_mean
from tina.trackers import Windowed


class _Recorder:
    def __init__(self):
        self.records = []
        self.closed = False

    def log(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


def test_trackers_get_one_averaged_record_per_logging_window():
    trackers = Windowed([], None, {}, every=3)
    trackers._impl = _Recorder()  # as if TensorBoard / W&B were configured
    for step in range(1, 8):
        trackers.log({"step": step, "reward": float(step), "usd": 0.1 * step, "skipped": False, "note": None})
    trackers.close()
    got = trackers._impl.records
    assert [r["step"] for r in got] == [3, 6, 7]  # two full windows and the rest at the end
    assert got[0]["reward"] == 2.0 and got[1]["reward"] == 5.0 and got[2]["reward"] == 7.0  # means of the window
    assert got[1]["usd"] == 0.1 * 6  # running totals: the window's last value
    assert trackers._impl.closed


def test_window_mean_skips_missing_values():
    assert window_mean([{"step": 1, "kl": None}, {"step": 2, "kl": 0.5}]) == {"step": 2, "kl": 0.5}
