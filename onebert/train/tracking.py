"""Experiment trackers (`--report-to tensorboard|wandb|mlflow|none`): the metrics.jsonl records, elsewhere too.

Each tracker gets exactly the records metrics.jsonl gets (train and eval, same steps), as scalars
named SPLIT/NAME (train/loss, eval/accuracy), finite numbers only (metrics.jsonl has null for the
others). Only rank 0 opens trackers (`MetricsLog` fans its records out to them), and they are closed
at the end of the run and on errors. Nothing reaches the network by default:

tensorboard  event files in RUN_DIR/tensorboard (on a resume, the steps about to be redone are purged)
wandb        offline mode, files in RUN_DIR/wandb, unless the user set WANDB_MODE
mlflow       a local file store RUN_DIR/mlruns, unless the user set MLFLOW_TRACKING_URI

Each library is an optional extra: a choice whose library is not installed is refused before the
run starts, naming the extra (pip install 'onebert[tensorboard]').
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from onebert.errors import OneBertError

# choice -> (module to import, the pip extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
CHOICES = (*TRACKERS, "none")
HELP = ("where metrics go besides RUN_DIR/metrics.jsonl: tensorboard (RUN_DIR/tensorboard), wandb (offline, "
        "RUN_DIR/wandb, unless WANDB_MODE is set), mlflow (local store RUN_DIR/mlruns, unless MLFLOW_TRACKING_URI "
        "is set), several as a list, or none (default); each needs its extra: pip install 'onebert[NAME]'")


class Tracker(Protocol):
    """One destination of the run's metric records."""

    def log(self, split: str, step: int, scalars: dict[str, float]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def parse_report_to(value: str | Sequence[str] | None) -> list[str]:
    """'tensorboard,wandb' / ['tensorboard', 'wandb'] / 'none' / None -> the tracker names, checked."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [part for v in value for part in str(v).split(",")]
    names = list(dict.fromkeys(item.strip().lower() for item in items if item.strip()))
    unknown = [name for name in names if name not in CHOICES]
    if unknown:
        raise OneBertError(f"--report-to {unknown[0]}: not a tracker; choose from {', '.join(CHOICES)}")
    if "none" in names and len(names) > 1:
        raise OneBertError("--report-to none cannot be combined with a tracker")
    return [name for name in names if name != "none"]


def check_installed(names: Iterable[str]) -> None:
    """Refuse a tracker whose library is missing, before anything is written or trained."""
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise OneBertError(f"--report-to {name}: {module} is not installed; pip install 'onebert[{extra}]'")


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers, without split and step (what metrics.jsonl holds as numbers)."""
    return {k: float(v) for k, v in record.items()
            if k not in ("split", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def open_trackers(names: Sequence[str], run_dir: str | os.PathLike, options: dict[str, Any] | None = None,
                  resume_step: int | None = None) -> list[Tracker]:
    """The trackers `names` asks for, writing into RUN_DIR; `options` are recorded as the run's parameters."""
    check_installed(names)
    opened: list[Tracker] = []
    try:
        for name in names:
            opened.append(_OPENERS[name](Path(run_dir), dict(options or {}), resume_step))
    except BaseException:
        for tracker in opened:
            tracker.close(failed=True)
        raise
    return opened


class TensorBoardTracker:
    def __init__(self, run_dir: Path, options: dict[str, Any], resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on a resume, events of the steps after the checkpoint (about to be redone) are
        # dropped, as metrics.jsonl drops their records.
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)
        self.writer.add_text("options", "\n".join(f"    {k}: {v}" for k, v in options.items()), 0)

    def log(self, split: str, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, options: dict[str, Any], resume_step: int | None):
        import wandb

        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "onebert"), name=run_dir.resolve().name,
                              dir=str(run_dir), config=_plain(options),
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit=True)

    def log(self, split: str, step: int, scalars: dict[str, float]) -> None:
        self.run.log({f"{split}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowTracker:
    def __init__(self, run_dir: Path, options: dict[str, Any], resume_step: int | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (run_dir / "mlruns").resolve().as_uri()
            # mlflow >= 3.7 refuses a file store unless allowed; it is the one local store that needs
            # no database package (mlflow-skinny has none), so allow it, unless the user decided.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # A client of its own rather than mlflow's process-wide active run: a library call must
        # not change the caller's mlflow state.
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name("onebert")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("onebert")
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.resolve().name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in _plain(options).items()]
        if params:
            self.client.log_batch(self.run_id, params=params)

    def log(self, split: str, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{split}/{k}", v, now, step) for k, v in scalars.items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in options.items()}


_OPENERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}

__all__ = ["CHOICES", "HELP", "Tracker", "check_installed", "open_trackers", "parse_report_to", "scalars_of"]
