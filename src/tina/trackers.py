"""Optional experiment trackers (``train.report_to: [tensorboard, wandb]``), imported only when asked for.

metrics.jsonl is always written and is the source of truth; trackers get a copy of each step's numbers.  A tracker
whose package is missing is a one-line error naming the install command, raised before any model is loaded.

* ``tensorboard`` writes event files to ``RUN/tensorboard/`` (a resumed run purges events after its checkpoint).
* ``wandb`` logs to the project in ``$WANDB_PROJECT`` (default ``tina``); the run id is kept in ``RUN/wandb_id.txt``
  so a resumed run continues the same W&B run.  Set ``WANDB_MODE=offline`` on machines without network.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from tina.errors import TinaError
from tina.records import window_mean

INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def check_available(names: list[str]) -> None:
    """Raise TinaError if a requested tracker's package cannot be imported."""
    for name in names:
        try:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            elif name == "wandb":
                import wandb  # noqa: F401
        except ImportError:
            raise TinaError(
                f"train.report_to: {name} is not installed; install it with `{INSTALL[name]}` "
                f"(or `pip install 'tina[tracking]'`), or remove it from train.report_to"
            ) from None


class Trackers:
    """The requested trackers; ``log(record)`` sends every numeric field, ``close()`` flushes."""

    def __init__(self, names: list[str], run_dir: Path, config: dict, *, start_step: int = 0):
        check_available(names)
        self._writers = []
        run_dir = Path(run_dir)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
            self._writers.append(("tensorboard", tb))
        if "wandb" in names:
            import wandb

            id_file = run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            try:
                run = wandb.init(
                    project=os.environ.get("WANDB_PROJECT", "tina"),
                    name=run_dir.name,
                    id=run_id,
                    resume="allow",
                    dir=str(run_dir),
                    config=config,
                )
            except Exception as exc:  # noqa: BLE001 - wandb raises many types (network, auth); all mean "cannot start"
                self.close()
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise TinaError(
                    f"train.report_to: wandb could not start ({first}); run `wandb login`, set "
                    "WANDB_MODE=offline, or remove wandb from train.report_to"
                ) from None
            self._writers.append(("wandb", run))

    def log(self, record: dict) -> None:
        step = record["step"]
        numbers = {
            k: float(v)
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        for kind, writer in self._writers:
            if kind == "tensorboard":
                for k, v in numbers.items():
                    writer.add_scalar(k, v, step)
            else:
                writer.log(numbers, step=step)

    def close(self) -> None:
        for kind, writer in self._writers:
            if kind == "tensorboard":
                writer.close()
            else:
                writer.finish()
        self._writers = []


class Windowed:
    """Optional trackers (train.report_to), imported only when asked for; a no-op otherwise.

    They receive one record every ``every`` steps (``train.logging_steps``): the mean of the window's numeric metrics
    (the step number and running totals -- seconds, dollars -- are the window's last).  metrics.jsonl keeps every
    step regardless."""

    def __init__(self, names: list[str], run_dir: Path, config: dict, *, start_step: int = 0, every: int = 1):
        self._impl = None
        self.every, self._window = every, []
        if names:
            self._impl = Trackers(names, run_dir, config, start_step=start_step)

    def log(self, record: dict) -> None:
        if self._impl is None:
            return
        self._window.append(record)
        if record["step"] % self.every == 0:
            self._impl.log(window_mean(self._window))
            self._window = []

    def close(self) -> None:
        if self._impl is not None:
            if self._window:
                self._impl.log(window_mean(self._window))
            self._impl.close()
