"""The stage runner: a run as a recorded sequence of stages that ``--resume`` continues.

A method (:mod:`filterprune.workflows.methods`) is ordinary code that calls ``runner.stage(name, fn)``
for each unit of work: scoring, selection, applying a plan, one schedule step, a fine-tune, C-SGD's
centripetal training, the trim. The runner

* runs ``fn`` unless the folder's ``run_state.json`` records the stage as done, in which case it
  returns the recorded result instead (the run is resumed);
* stores the result under ``stages/``: score tensors as safetensors, a :class:`~filterprune.graph.groups.PrunePlan`
  or any JSON-able value in the state file. It always returns the *stored* value, decoded, so an
  uninterrupted run and a resumed one continue from bit-identical data;
* with ``snapshot=True`` (stages that change the model) saves the model after the stage
  (``stages/NN-name.safetensors``, the project's safetensors + JSON format) before marking it done;
  :meth:`Runner.restore` rebuilds the model of the last finished snapshot on resume;
* seeds Python, NumPy and torch at the start of each stage from ``(seed, stage name)``, so a stage's
  randomness does not depend on what ran before it in this process;
* writes every file atomically (temp file + ``os.replace``): after SIGKILL the folder holds the stages
  finished so far, nothing torn.

Fine-tunes checkpoint every epoch themselves (:func:`filterprune.train.fit`); their stage resumes from
the newest epoch checkpoint.

Under ``torchrun`` every process runs every stage (the work inside may be collective: DDP training,
sharded evaluation), then each stage's result is rank 0's (``broadcast_object``), so all processes
continue from the same scores, plan and clusters; only rank 0 writes the folder, and every process
reads it on resume.

Test hook: ``FILTERPRUNE_TEST_KILL_AT=<point>[:<SIGNAL>]`` makes the process send itself ``SIGNAL``
(default ``KILL``) when it reaches ``<point>``: a stage name (at its start), or
``<fit folder>/epoch_NNN`` (right after that epoch's checkpoint). The kill-and-resume tests use it to
stop a run at an exact place.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..checkpoint import read_checkpoint, save_checkpoint
from ..errors import FilterpruneError
from ..graph.groups import PrunePlan
from ..utils.io import atomic_write_json, make_dirs
from ..utils.killpoint import kill_point
from ..utils.seed import seed_everything

logger = logging.getLogger(__name__)

T = TypeVar("T")

STATE = "run_state.json"
FORMAT = "filterprune.stages/1"

__all__ = ["FORMAT", "STATE", "Runner"]


def stage_seed(seed: int, name: str) -> int:
    """The seed a stage starts from: a pure function of the run's seed and the stage's name."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


class Runner:
    """Runs and records the stages of one run folder (module docstring).

    Args:
        folder: the run folder (claimed by :func:`~filterprune.utils.io.open_run_folder`).
        seed: the run's seed.
        resume: read the recorded stages instead of starting afresh.
    """

    def __init__(self, folder: Path, *, seed: int, resume: bool) -> None:
        from ..distributed import current_shard

        self.folder = Path(folder)
        self.writer = current_shard()[0] == 0  # under torchrun only rank 0 writes
        self.stages_dir = self.folder / "stages"
        self.seed = seed
        self.model: nn.Module | None = None
        state = self._read() if resume else None
        self.state: dict[str, Any] = state or {"format": FORMAT, "status": "running", "stages": []}
        self.state.update(status="running", error=None)
        self._save()

    # ----------------------------------------------------------------- state file
    def _read(self) -> dict[str, Any] | None:
        import json

        path = self.folder / STATE
        if not path.exists():
            return None  # killed before the first stage: start afresh in the same folder
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = None
        if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("stages"), list):
            raise FilterpruneError(f"{path}: not a filterprune run state; start a new run in another --out")
        return state

    def _save(self) -> None:
        if self.writer:
            atomic_write_json(self.folder / STATE, self.state)

    def _record(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.state["stages"] if s["name"] == name), None)

    def done(self, name: str) -> bool:
        """Whether stage ``name`` is recorded as finished."""
        rec = self._record(name)
        return rec is not None and rec.get("done", False)

    def done_names(self) -> list[str]:
        """The finished stages, in order."""
        return [s["name"] for s in self.state["stages"] if s.get("done")]

    def reopen(self, name: str) -> None:
        """Forget stage ``name`` and every stage after it (they run again; earlier ones stay done)."""
        names = [s["name"] for s in self.state["stages"]]
        if name in names:
            dropped = self.state["stages"][names.index(name):]
            self.state["stages"] = self.state["stages"][:names.index(name)]
            logger.info("resume: running again from stage %s (%d stages)", name, len(dropped))
            self._save()

    # ----------------------------------------------------------------- results
    def _encode(self, index: int, name: str, result: Any) -> Any:
        if isinstance(result, PrunePlan):
            return {"__plan__": {k: [int(i) for i in v] for k, v in result.prune_idxs.items()}}
        if isinstance(result, dict) and result and all(isinstance(v, torch.Tensor) for v in result.values()):
            path = self.stages_dir / f"{index:02d}-{name}.tensors.safetensors"
            save_checkpoint(path, result, {"stage": name})
            return {"__tensors__": path.name}
        return result

    def _decode(self, stored: Any) -> Any:
        if isinstance(stored, dict) and "__plan__" in stored:
            return PrunePlan({k: list(v) for k, v in stored["__plan__"].items()})
        if isinstance(stored, dict) and "__tensors__" in stored:
            tensors, _ = read_checkpoint(self.stages_dir / stored["__tensors__"])
            return tensors
        return stored

    # ----------------------------------------------------------------- running
    def stage(self, name: str, fn: Callable[[], T], *, snapshot: bool = False) -> T:
        """Run stage ``name`` (or return its recorded result); see the module docstring.

        Args:
            name: unique within the run (``"step2.score"``).
            fn: the work; returns None, a dict of tensors, a PrunePlan or a JSON-able value.
            snapshot: save :attr:`model` after the stage.
        """
        rec = self._record(name)
        if rec is not None and rec.get("done"):
            return self._decode(rec.get("result"))
        if rec is None:
            rec = {"name": name}
            self.state["stages"].append(rec)
        index = self.state["stages"].index(rec)
        rec.update(done=False, started=time.time())
        self.state["status"] = f"running {name}"
        self._save()
        kill_point(name)
        seed_everything(stage_seed(self.seed, name))
        t0 = time.perf_counter()
        from ..distributed import broadcast_object

        result = broadcast_object(fn())  # under torchrun: rank 0's result in every process
        if not self.writer:
            rec.update(done=True, seconds=round(time.perf_counter() - t0, 3))
            return result
        stored = self._encode(index, name, result)
        if snapshot:
            if self.model is None:
                raise RuntimeError("Runner.model is not set: nothing to snapshot")
            rec["model"] = self._save_model(index, name)
        rec.update(done=True, seconds=round(time.perf_counter() - t0, 3), result=stored)
        self.state["status"] = "running"
        self._save()
        logger.info("stage %s done (%.1f s)", name, rec["seconds"])
        return self._decode(stored)

    def _save_model(self, index: int, name: str) -> str:
        from ..api import save

        path = self.stages_dir / f"{index:02d}-{name}.safetensors"
        make_dirs(self.stages_dir)
        save(self.model, path, meta={"stage": name, "training": self.model.training})
        return path.name

    def last_snapshot(self) -> Path | None:
        """The model file of the last finished stage that saved one."""
        files = [s["model"] for s in self.state["stages"] if s.get("done") and s.get("model")]
        return self.stages_dir / files[-1] if files else None

    def restore(self, model: nn.Module) -> nn.Module:
        """The model as the last finished snapshot left it (``model`` itself if there is none), on
        ``model``'s device; also becomes :attr:`model`."""
        from ..api import load

        path = self.last_snapshot()
        if path is not None:
            device = next(model.parameters()).device
            _, meta = read_checkpoint(path)
            # into ``model`` itself: a user's model (--model package.module:factory) is not rebuilt by name
            model = load(path, model=model).to(device).train(bool(meta.get("training", False)))
            logger.info("resume: model restored from %s", path)
        self.model = model
        return model

    def fit_dir(self, name: str) -> Path:
        """The folder a fine-tune stage checkpoints into."""
        return self.stages_dir / name

    # ----------------------------------------------------------------- end
    def finish(self, **fields: Any) -> None:
        """Mark the run complete."""
        self.state.update(status="done", finished=time.time(), **fields)
        self._save()

    def fail(self, error: BaseException) -> None:
        """Record why the run stopped (the stages done so far stay)."""
        if isinstance(error, KeyboardInterrupt):
            status, text = "interrupted", "interrupted (Ctrl-C)"
        elif isinstance(error, SystemExit):
            status, text = "interrupted", f"terminated (exit {error.code})"
        else:
            status, text = "failed", (str(error).splitlines() or [type(error).__name__])[0]
        self.state.update(status=status, error=text)
        self._save()

    def changed_model(self) -> bool:
        """Whether a finished stage changed the model (work worth keeping)."""
        return self.last_snapshot() is not None


def as_dict(obj: Any) -> Any:
    """A dataclass as a JSON-able dict (other values unchanged)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
