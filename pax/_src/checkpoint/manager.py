"""`pax.CheckpointManager`: numbered checkpoints in one directory, rotated, saved in the background.

Built on `pax.save`'s format, not orbax-checkpoint: no new dependency, each checkpoint is a file
`pax.load` reads (``step_{step:08d}.npz``), written atomically and across processes by `pax.save`.
A save, so that a kill anywhere leaves a usable directory: (1) `pax.save` writes the step's file
(complete or absent); (2) process 0 removes the checkpoints no longer kept (the file, then its
parts); (3) process 0 replaces the index ``checkpoints.json`` (metrics per step) atomically. The
files say which steps exist: an index entry without its file is ignored, a file without an entry
(killed between 1 and 3) is a step without metrics (kept by recency, never ranked best).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import threading
from typing import Any, Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.checkpoint.check import PART_NAME
from pax._src.checkpoint.codec import check_leaf, is_key_array
from pax._src.checkpoint.io import remove_stale_temporaries, temporary_name
from pax._src.checkpoint.save_load import _refuse_shared_modules, load, save
from pax._src.core import tracing
from pax._src.errors import CheckpointError

T = TypeVar("T")
INDEX = "checkpoints.json"
_FORMAT = "pax-checkpoint-manager"
_STEP_FILE = re.compile(r"step_(?P<step>[0-9]+)\.npz")


def _snapshot_leaf(leaf: Any) -> Any:
    """A copy of `leaf` the caller may donate or modify meanwhile (host memory where possible)."""
    if isinstance(leaf, np.ndarray):
        return leaf.copy()
    if not isinstance(leaf, jax.Array):
        return leaf  # Python scalars, None
    if is_key_array(leaf):  # keys keep their type: the key data on the host, wrapped again
        data = np.asarray(jax.device_get(jax.random.key_data(leaf)))
        return jax.random.wrap_key_data(jnp.asarray(data), impl=jax.random.key_impl(leaf))
    if leaf.weak_type:  # numpy has no weak type; a device copy keeps it (usually a scalar)
        return leaf.copy()
    host = jax.device_get(leaf)
    # On the CPU backend device_get may return a view of the device buffer: copy it.
    return host.copy() if any(d.platform == "cpu" for d in leaf.devices()) else host


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class CheckpointManager:
    """Keeps numbered checkpoints of a training run in one directory: the last N and/or best k.

    Each `save` writes ``{directory}/step_{step:08d}.npz`` with `pax.save` (atomic, and across
    processes every process calls `save` with the same step and tree, as for `pax.save`; only
    process 0 removes old checkpoints and writes the index). The latest checkpoint is always
    kept, so a run can resume; beyond it, the last ``max_to_keep`` steps and the ``best_k``
    steps by ``metrics[best_metric]`` are kept (both None: every checkpoint is kept).

    With ``async_save=True``, `save` copies the arrays to host memory (the caller may donate or
    change them at once) and a background thread writes them; a `save` waits for the previous
    one. A writer's error is raised by the next `save`, `wait` or `restore`. Call `wait` at exit.

    Args:
      directory: the directory of the checkpoints (created if missing; shared by all processes).
      max_to_keep: how many of the most recent checkpoints to keep (an int >= 1), or None.
      best_k: how many of the best checkpoints by ``best_metric`` to keep (an int >= 1), or None.
      best_metric: the key of ``metrics`` that ranks checkpoints; required with ``best_k``.
      best_mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"`` (e.g. an accuracy).
        A NaN metric ranks last.
      async_save: write in a background thread (one process only: a save across processes
        runs collectives, which must not run beside the training step's).

    Raises:
      TypeError: if ``directory`` is not a str or os.PathLike, or an argument has the wrong type.
      ValueError: if ``max_to_keep`` or ``best_k`` is below 1, ``best_k`` lacks ``best_metric``,
        ``best_mode`` is not "min" or "max", or ``async_save`` is set across processes.

    Example:
      >>> import tempfile, jax, pax
      >>> manager = pax.CheckpointManager(tempfile.mkdtemp(), max_to_keep=2)
      >>> for step in (10, 20, 30):
      ...     manager.save(step, pax.nn.Linear(2, 3, rng_key=jax.random.key(step)))
      >>> manager.all_steps()
      [20, 30]
      >>> net = manager.restore(pax.nn.Linear(2, 3))  # the latest: step 30
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = None,
        best_k: int | None = None,
        best_metric: str | None = None,
        best_mode: Literal["min", "max"] = "min",
        async_save: bool = False,
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"pax.CheckpointManager: directory must be a str or os.PathLike, got "
                f"{type(directory).__name__}. Fix: pax.CheckpointManager('checkpoints')."
            )
        for name, value in (("max_to_keep", max_to_keep), ("best_k", best_k)):
            if value is not None and not _is_int(value):
                raise TypeError(
                    f"pax.CheckpointManager: {name} must be None or an int >= 1, got {value!r}. "
                    f"Fix: pax.CheckpointManager(directory, {name}=3)."
                )
            if value is not None and value < 1:
                raise ValueError(
                    f"pax.CheckpointManager: {name} must be None or an int >= 1, got {value}. "
                    f"Fix: {name}=1 keeps one checkpoint; {name}=None keeps them all."
                )
        if best_k is not None and best_metric is None:
            raise ValueError(
                "pax.CheckpointManager: best_k needs best_metric, the metric that ranks the "
                "checkpoints. Fix: pax.CheckpointManager(directory, best_k=3, "
                "best_metric='loss', best_mode='min')."
            )
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError(
                f"pax.CheckpointManager: best_metric must be a str (a key of save's metrics), "
                f"got {best_metric!r}. Fix: best_metric='loss'."
            )
        if best_mode not in ("min", "max"):
            raise ValueError(
                f"pax.CheckpointManager: best_mode must be 'min' or 'max', got {best_mode!r}. "
                f"Fix: best_mode='min' for a loss, best_mode='max' for an accuracy."
            )
        if not isinstance(async_save, (bool, np.bool_)):
            raise TypeError(
                f"pax.CheckpointManager: async_save must be True or False, got "
                f"{async_save!r}. Fix: async_save=True."
            )
        if async_save and jax.process_count() > 1:
            raise ValueError(
                f"pax.CheckpointManager: async_save=True with {jax.process_count()} processes: "
                f"a save across processes runs collectives, which must not run in a thread "
                f"beside the training step's. Fix: async_save=False (every process calls save)."
            )
        self.directory = os.fsdecode(os.fspath(directory))
        self.max_to_keep, self.best_k = max_to_keep, best_k
        self.best_metric, self.best_mode = best_metric, best_mode
        self.async_save = bool(async_save)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # one writer of the index and deleter at a time
        os.makedirs(self.directory, exist_ok=True)
        self._metrics = self._read_index()

    def path(self, step: int) -> str:
        """The file of checkpoint ``step`` (which may not exist)."""
        return os.path.join(self.directory, f"step_{step:08d}.npz")

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints in the directory, in increasing order."""
        with contextlib.suppress(FileNotFoundError):
            names = os.listdir(self.directory)
            return sorted(int(m["step"]) for n in names if (m := _STEP_FILE.fullmatch(n)))
        return []

    def latest_step(self) -> int | None:
        """The largest complete step, or None (a save in flight is not included)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The complete step with the best ``best_metric``, or None (no metric or no step)."""
        ranked = self._ranked(self.all_steps())
        return ranked[0] if ranked else None

    def metrics(self, step: int) -> dict[str, float] | None:
        """The metrics saved with ``step``, or None if it was saved without (or killed)."""
        return self._metrics.get(step)

    # --- saving ---------------------------------------------------------------------------------

    def save(self, step: int, tree: Any, metrics: dict[str, Any] | None = None) -> None:
        """Saves ``tree`` as checkpoint ``step``, then removes the checkpoints no longer kept.

        Args:
          step: a non-negative int, larger than every saved step.
          tree: what `pax.save` takes, e.g. ``(model, optimizer)``.
          metrics: numbers describing this checkpoint, e.g. ``{"loss": 0.3}``; required, with
            ``best_metric`` among its keys, when the manager has a ``best_metric``.

        Raises:
          TypeError: if ``step`` is not an int or a metric is not a real number.
          ValueError: if ``step`` is negative or not above the latest step, or ``metrics`` lacks
            ``best_metric``. Also the error of a failed asynchronous save (then this save is not
            made), and whatever `pax.save` raises.
        """
        self.wait()
        step = self._check_step(step)
        record = self._check_metrics(step, metrics)
        if not self.async_save:
            self._write(step, tree, record)
            return
        tracing.check_pending()  # pax.save's checks, before the snapshot hides the originals
        _refuse_shared_modules(tree)
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            check_leaf(jax.tree_util.keystr(key_path) or "the root", leaf)
        snapshot = jax.tree_util.tree_map(_snapshot_leaf, tree)
        self._thread = threading.Thread(
            target=self._background, args=(step, snapshot, record), name=f"pax-save-{step}"
        )
        self._thread.start()

    def wait(self) -> None:
        """Waits for the asynchronous save in flight; raises its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _background(self, step: int, tree: Any, record: dict[str, float] | None) -> None:
        try:
            self._write(step, tree, record)
        except BaseException as err:  # kept for the next call: never lost
            add_note = getattr(err, "add_note", None)  # Python >= 3.11; the error stays
            if add_note is not None:
                add_note(
                    f"pax.CheckpointManager: raised by the asynchronous save of step {step} to "
                    f"{self.path(step)}; the previous checkpoints are intact."
                )
            self._error = err

    def _write(self, step: int, tree: Any, record: dict[str, float] | None) -> None:
        save(self.path(step), tree)
        if jax.process_index() != 0:
            return  # process 0 alone removes checkpoints and writes the index
        with self._lock:
            self._metrics[step] = record
            steps = self.all_steps()
            kept = self._kept(steps)
            for old in steps:
                if old not in kept:
                    self._delete(old)
            self._metrics = {s: m for s, m in self._metrics.items() if s in kept}
            self._write_index()

    def _kept(self, steps: list[int]) -> set[int]:
        if self.max_to_keep is None and self.best_k is None:
            return set(steps)
        kept = set(steps[-1:])  # the latest: a run resumes from it
        if self.max_to_keep is not None:
            kept.update(steps[-self.max_to_keep :])
        if self.best_k is not None:
            kept.update(self._ranked(steps)[: self.best_k])
        return kept

    def _ranked(self, steps: list[int]) -> list[int]:
        """`steps` with a value of ``best_metric``, best first (NaN last, ties: later first)."""
        if self.best_metric is None:
            return []
        sign = 1.0 if self.best_mode == "min" else -1.0
        values = {s: (self._metrics.get(s) or {}).get(self.best_metric) for s in steps}
        scored = [(math.isnan(v), 0.0 if math.isnan(v) else sign * v, -s)
                  for s, v in values.items() if v is not None]  # fmt: skip
        return [-negated for _, _, negated in sorted(scored)]

    def _delete(self, step: int) -> None:
        path = self.path(step)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # first the main file: without it the step no longer exists
        base = os.path.basename(path)
        for name in os.listdir(self.directory):
            match = PART_NAME.fullmatch(name)
            if match is not None and match["base"] == base:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.directory, name))

    def _check_step(self, step: Any) -> int:
        if not _is_int(step):
            raise TypeError(
                f"pax.CheckpointManager.save: step must be an int, got {step!r} "
                f"({type(step).__name__}). Fix: manager.save(int(step), tree)."
            )
        step = int(step)
        if step < 0:
            raise ValueError(
                f"pax.CheckpointManager.save: step must be >= 0, got {step}. Fix: "
                f"manager.save(step, tree) with the number of training steps done."
            )
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"pax.CheckpointManager.save: step {step} is not larger than the latest "
                f"checkpoint's, {latest}, in {self.directory}; a checkpoint is never "
                f"overwritten. Fix: continue counting from the restored step: step = "
                f"manager.latest_step() + steps_done, or use a new directory."
            )
        return step

    def _check_metrics(self, step: int, metrics: Any) -> dict[str, float] | None:
        where = f"pax.CheckpointManager.save(step={step})"
        if metrics is None:
            if self.best_metric is not None:
                raise ValueError(
                    f"{where}: metrics is None, but the manager ranks checkpoints by "
                    f"best_metric={self.best_metric!r}. Fix: manager.save(step, tree, "
                    f"metrics={{{self.best_metric!r}: value}})."
                )
            return None
        if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
            raise TypeError(
                f"{where}: metrics must be a dict from str names to numbers, got {metrics!r}. "
                f"Fix: metrics={{'loss': float(loss)}}."
            )
        if self.best_metric is not None and self.best_metric not in metrics:
            raise ValueError(
                f"{where}: metrics has no {self.best_metric!r} (the best_metric), only "
                f"{sorted(map(str, metrics))}. Fix: metrics={{{self.best_metric!r}: value, ...}}."
            )
        record = {}
        for key, value in metrics.items():
            try:
                record[key] = float(np.asarray(value).item())
            except (TypeError, ValueError):
                raise TypeError(
                    f"{where}: metrics[{key!r}] must be a real number (a float, an int or a "
                    f"scalar array), got {value!r}. Fix: metrics={{{key!r}: float(value)}}."
                ) from None
        return record

    def _read_index(self) -> dict[int, dict[str, float] | None]:
        path = os.path.join(self.directory, INDEX)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            return {int(r["step"]): r["metrics"] for r in doc["checkpoints"]}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"pax.CheckpointManager: the index {path} is not one written by pax ({err}). "
                f"The checkpoint files are intact; only the metrics are in the index. Fix: "
                f"remove it (os.remove({path!r})) to start a new index."
            ) from None

    def _write_index(self) -> None:
        """Replaces the index atomically: a temporary in the directory, fsynced, renamed."""
        path = os.path.join(self.directory, INDEX)
        checkpoints = [{"step": s, "metrics": m} for s, m in sorted(self._metrics.items())]
        data = json.dumps({"format": _FORMAT, "version": 1, "checkpoints": checkpoints})
        remove_stale_temporaries(path)
        tmp = os.path.join(self.directory, temporary_name(path))
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def restore(self, like: T, step: int | None = None) -> T:
        """Loads checkpoint ``step`` (default: the latest) into a tree like ``like``, as `pax.load`.

        Waits for an asynchronous save in flight first (and raises its error if it failed).

        Raises:
          FileNotFoundError: if the directory holds no checkpoint, or none of ``step``.
          CheckpointError: whatever `pax.load` raises for the file.
        """
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(
                    f"pax.CheckpointManager.restore: no checkpoint in {self.directory}. Fix: "
                    f"check manager.latest_step() is not None before restoring, e.g. "
                    f"if manager.latest_step() is not None: tree = manager.restore(tree)."
                )
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"pax.CheckpointManager.restore: no checkpoint of step {step!r} in "
                f"{self.directory}; its steps are {steps}. Fix: manager.restore(like, "
                f"step=s) with s in manager.all_steps()."
            )
        return load(self.path(step), like)
