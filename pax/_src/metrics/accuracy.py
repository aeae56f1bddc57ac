"""`Accuracy`: the running (weighted) fraction of correct predictions, optionally top-k."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.arguments import boolean
from pax._src.describe import describe
from pax._src.metrics.base import (
    AxisName,
    Metric,
    as_weights,
    check_values,
    weight_count,
    weighted_sum,
)


def _top_k(cls: str, value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    shown = describe(value) if hasattr(value, "shape") else repr(value)
    raise ValueError(
        f"{cls}: top_k must be a positive int, got {shown}. Fix: top_k=1 (the top class must "
        f"be the label) or e.g. top_k=5 (the label among the 5 highest scores)."
    )


def _threshold(cls: str, value: Any) -> float | None:
    if value is None:
        return None
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if not number or not math.isfinite(float(value)):
        shown = describe(value) if hasattr(value, "shape") else repr(value)
        raise TypeError(
            f"{cls}: threshold must be None or a finite number, got {shown}. Fix: "
            f"threshold=0.0 for a binary head's logits (class 1 when logit > 0), threshold=0.5 "
            f"for its probabilities."
        )
    return float(value)


class Accuracy(Metric):
    """The running (weighted) fraction of predictions that match integer labels.

    `predictions` are either scores (logits or probabilities) of shape
    ``labels.shape + (classes,)``, whose top class (or any of the `top_k` top classes) is the
    prediction, or integer class ids of the shape of `labels`. Ties between scores go to the
    lower class id, as with `jnp.argmax`. A label outside ``[0, classes)`` (e.g. the -1 of a
    padded example) never counts as correct, but it still counts as seen unless `mask` leaves
    it out. Integer predictions of the shape of the labels are compared entry by entry: for
    one-hot labels (and one-hot or score predictions of their shape) pass ``one_hot=True``.

    A binary classifier with one score per example (a ``(batch, 1)`` or ``(batch,)`` head)
    needs `threshold`: the prediction is class 1 where the score is above it, so
    ``threshold=0.0`` reads logits and ``threshold=0.5`` probabilities. Without it such a head
    is refused: the scores alone do not say which they are.

    The states are the float32 ``correct`` (weighted count of correct predictions) and
    ``count`` (weighted count of predictions). Before any update the accuracy is NaN.

    Args:
      top_k: a prediction is correct when the label is among the `top_k` highest scores.
      axis_name: sum each update over this mapped axis (``jax.shard_map`` / ``jax.pmap``); see
        `pax.metrics.Metric`.
      threshold: for one score per label (a binary head): class 1 where the score is above
        it (0.0 for logits, 0.5 for probabilities); labels are 0/1 (ints or booleans).
      one_hot: the labels are one-hot (or other per-class scores) along their last axis: both
        they and predictions of their shape are read with `jnp.argmax`.

    Raises:
      ValueError: if `top_k` is not a positive int, or is combined with `threshold`, or
        `threshold` with `one_hot`.
      TypeError: if `axis_name` is not None, a str or a tuple of str, `threshold` is not a
        finite number, or `one_hot` is not a bool.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> acc = pax.metrics.Accuracy()
      >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
      >>> acc(logits, jnp.array([0, 1, 1])).item()  # 2 of 3
      0.666...
      >>> acc(jnp.array([4, 5]), jnp.array([4, 0]), mask=jnp.array([True, False])).item()
      0.75
      >>> pax.metrics.Accuracy(top_k=2)(logits, jnp.array([0, 1, 1])).item()
      1.0
      >>> binary = pax.metrics.Accuracy(threshold=0.0)  # one logit per example
      >>> binary(jnp.array([[1.5], [-0.3], [0.2]]), jnp.array([1, 0, 0])).item()
      0.666...
      >>> one_hot = jnp.array([[0, 1, 0], [0, 0, 1]])
      >>> pax.metrics.Accuracy(one_hot=True)(jnp.array([[0, 1, 0], [1, 0, 0]]), one_hot).item()
      0.5
    """

    correct: jax.Array
    count: jax.Array

    def __init__(
        self,
        top_k: int = 1,
        axis_name: AxisName = None,
        *,
        threshold: float | None = None,
        one_hot: bool = False,
    ) -> None:
        super().__init__(axis_name)
        cls = type(self).__name__
        self.top_k = _top_k(cls, top_k)
        self.threshold = _threshold(cls, threshold)
        self.one_hot = boolean(cls, "one_hot", one_hot)
        if self.threshold is not None and self.top_k != 1:
            raise ValueError(
                f"{cls}: top_k={self.top_k} with threshold={self.threshold}: a binary head has "
                f"one score, so there is no top k. Fix: {cls}(threshold={self.threshold})."
            )
        if self.threshold is not None and self.one_hot:
            raise ValueError(
                f"{cls}: threshold={self.threshold} with one_hot=True: a threshold reads one "
                f"score per label, one-hot labels have one entry per class. Fix: "
                f"{cls}(threshold={self.threshold}) with 0/1 labels, or {cls}(one_hot=True)."
            )
        self.register_state("correct", jnp.zeros((), jnp.float32))
        self.register_state("count", jnp.zeros((), jnp.float32))

    def __call__(
        self, predictions: Any, labels: Any, weights: Any = None, mask: Any = None
    ) -> jax.Array:
        """Folds one batch into the accuracy and returns the new accuracy.

        Args:
          predictions: scores of shape ``labels.shape + (classes,)``, or integer class ids of
            the shape of `labels`; with `threshold`, one score per label (shape
            ``labels.shape`` or ``labels.shape + (1,)``).
          labels: integer class ids, of any shape (``(batch,)``, ``(batch, time)``, ...);
            one-hot along the last axis with ``one_hot=True``.
          weights: finite non-negative weights lined up with the leading axes of `labels`, or
            None.
          mask: booleans of the same kind of shape: False leaves the example out (padding).

        Raises:
          TypeError: if `labels` are not integers, or `predictions` are not numbers.
          ValueError: if the shapes of `predictions`, `labels`, `weights` or `mask` do not
            fit, `top_k` is over 1 with integer predictions or over the number of classes,
            the predictions have one score per label without `threshold`, or weights known
            here are negative or not finite.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> logits = jnp.zeros((4, 10)).at[:, 3].set(1.0)
          >>> pax.metrics.Accuracy()(logits, jnp.array([3, 3, 3, 0])).item()
          0.75
        """
        cls = type(self).__name__
        given = check_values(cls, "labels", labels, "integer class ids of shape (batch,)")
        labels = self._labels(given)
        predictions = check_values(
            cls, "predictions", predictions, "logits of shape (batch, classes)"
        )
        if self.one_hot and predictions.shape not in (given.shape, labels.shape):
            raise ValueError(
                f"{cls}: one_hot=True needs predictions of the shape of the one-hot labels "
                f"{given.shape} (scores) or {labels.shape} (class ids), got "
                f"{describe(predictions)}. Fix: pass labels jax.nn.one_hot(ids, classes) lined "
                f"up with the scores, or build {cls}() for integer class ids."
            )
        hits = self._hits(predictions, labels)
        w = as_weights(cls, labels.shape, weights, mask, what="the labels")
        self.accumulate(correct=weighted_sum(hits, w), count=weight_count(labels.shape, w))
        return self.compute()

    def compute(self) -> jax.Array:
        """Returns the accuracy so far (NaN before any weighted example), a float32 scalar.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> acc = pax.metrics.Accuracy()
          >>> _ = acc(jnp.array([1, 2]), jnp.array([1, 1]))
          >>> acc.compute().item()
          0.5
        """
        return self.correct / self.count

    def _labels(self, labels: jax.Array) -> jax.Array:
        cls = type(self).__name__
        if self.one_hot:
            if labels.ndim == 0 or labels.shape[-1] < 2:
                raise ValueError(
                    f"{cls}: one_hot=True needs labels with one entry per class on the last "
                    f"axis, got {describe(labels)}. Fix: pass jax.nn.one_hot(ids, classes), or "
                    f"build {cls}() for integer class ids."
                )
            return jnp.argmax(labels, axis=-1)
        if labels.dtype == jnp.bool_:
            return labels.astype(jnp.int32)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"{cls}: labels must be integer class ids, got {describe(labels)}. Fix: for "
                f"one-hot labels build {cls}(one_hot=True) (or pass jnp.argmax(labels, -1)); "
                f"for float ids, labels.astype(jnp.int32)."
            )
        return labels

    def _hits(self, predictions: jax.Array, labels: jax.Array) -> jax.Array:
        cls = type(self).__name__
        if self.threshold is not None:
            if predictions.shape == labels.shape + (1,):
                predictions = predictions[..., 0]
            if predictions.shape != labels.shape:
                raise ValueError(
                    f"{cls}: threshold={self.threshold} reads one score per label, got "
                    f"predictions {describe(predictions)} for labels of shape {labels.shape}. "
                    f"Fix: pass scores of shape {labels.shape} or {labels.shape + (1,)}; for "
                    f"scores of several classes build {cls}() without threshold."
                )
            return (predictions > self.threshold).astype(labels.dtype) == labels
        if predictions.shape == labels.shape:
            if not jnp.issubdtype(predictions.dtype, jnp.integer):
                raise TypeError(
                    f"{cls}: predictions of the shape of the labels {labels.shape} must be "
                    f"integer class ids, got {describe(predictions)}. Fix: pass scores of "
                    f"shape {labels.shape + ('classes',)}, or class ids, e.g. "
                    f"jnp.argmax(logits, -1); for one score per example (a binary head) "
                    f"build {cls}(threshold=0.0) for logits or {cls}(threshold=0.5) for "
                    f"probabilities."
                )
            if self.top_k != 1:
                raise ValueError(
                    f"{cls}: top_k={self.top_k} needs scores of shape "
                    f"{labels.shape + ('classes',)}, got integer predictions "
                    f"{describe(predictions)}. Fix: pass the logits, or build Accuracy(top_k=1)."
                )
            return predictions == labels
        if predictions.ndim != labels.ndim + 1 or predictions.shape[:-1] != labels.shape:
            raise ValueError(
                f"{cls}: predictions of shape {predictions.shape} do not fit labels of shape "
                f"{labels.shape}. Fix: pass scores of shape {labels.shape + ('classes',)} or "
                f"class ids of shape {labels.shape}."
            )
        classes = predictions.shape[-1]
        if classes == 1:
            raise ValueError(
                f"{cls}: predictions {describe(predictions)} hold one score per example (a "
                f"binary head): its top class is always 0. Fix: say how to read the score, "
                f"{cls}(threshold=0.0) for logits (class 1 when logit > 0) or "
                f"{cls}(threshold=0.5) for probabilities."
            )
        if self.top_k > classes:
            raise ValueError(
                f"{cls}: top_k={self.top_k} is more than the {classes} classes of the "
                f"predictions {describe(predictions)}; every prediction would be correct. Fix: "
                f"top_k <= {classes}."
            )
        if self.top_k == 1:
            return jnp.argmax(predictions, axis=-1) == labels
        _, top = jax.lax.top_k(predictions, self.top_k)
        return jnp.any(top == labels[..., None], axis=-1)
