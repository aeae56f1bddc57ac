"""`Accuracy`: the running (weighted) fraction of correct predictions, optionally top-k."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pax._src.arguments import positive_int
from pax._src.describe import describe
from pax._src.metrics.base import (
    AxisName,
    Metric,
    as_weights,
    check_values,
    weight_count,
    weighted_sum,
)


class Accuracy(Metric):
    """The running (weighted) fraction of predictions that match integer labels.

    `predictions` are either scores (logits or probabilities) of shape
    ``labels.shape + (classes,)``, whose top class (or any of the `top_k` top classes) is the
    prediction, or integer class ids of the shape of `labels`. Ties between scores go to the
    lower class id, as with `jnp.argmax`. A label outside ``[0, classes)`` (e.g. the -1 of a
    padded example) never counts as correct, but it still counts as seen unless `mask` leaves
    it out.

    The states are the float32 ``correct`` (weighted count of correct predictions) and
    ``count`` (weighted count of predictions). Before any update the accuracy is NaN.

    Args:
      top_k: a prediction is correct when the label is among the `top_k` highest scores.
      axis_name: sum each update over this mapped axis (``jax.shard_map`` / ``jax.pmap``); see
        `pax.metrics.Metric`.

    Raises:
      ValueError: if `top_k` is not a positive int.
      TypeError: if `axis_name` is not None, a str or a tuple of str.

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
    """

    correct: jax.Array
    count: jax.Array

    def __init__(self, top_k: int = 1, axis_name: AxisName = None) -> None:
        super().__init__(axis_name)
        self.top_k = positive_int(type(self).__name__, "top_k", top_k)
        self.register_state("correct", jnp.zeros((), jnp.float32))
        self.register_state("count", jnp.zeros((), jnp.float32))

    def __call__(
        self, predictions: Any, labels: Any, weights: Any = None, mask: Any = None
    ) -> jax.Array:
        """Folds one batch into the accuracy and returns the new accuracy.

        Args:
          predictions: scores of shape ``labels.shape + (classes,)``, or integer class ids of
            the shape of `labels`.
          labels: integer class ids, of any shape (``(batch,)``, ``(batch, time)``, ...).
          weights: non-negative weights lined up with the leading axes of `labels`, or None.
          mask: booleans of the same kind of shape: False leaves the example out (padding).

        Raises:
          TypeError: if `labels` are not integers, or `predictions` are not numbers.
          ValueError: if the shapes of `predictions`, `labels`, `weights` or `mask` do not
            fit, or `top_k` is over 1 with integer predictions or over the number of classes.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> logits = jnp.zeros((4, 10)).at[:, 3].set(1.0)
          >>> pax.metrics.Accuracy()(logits, jnp.array([3, 3, 3, 0])).item()
          0.75
        """
        labels = self._labels(labels)
        hits = self._hits(check_values(type(self).__name__, "predictions", predictions), labels)
        w = as_weights(type(self).__name__, labels.shape, weights, mask, what="the labels")
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

    def _labels(self, labels: Any) -> jax.Array:
        labels = check_values(type(self).__name__, "labels", labels)
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"{type(self).__name__}: labels must be integer class ids, got "
                f"{describe(labels)}. Fix: for one-hot labels pass jnp.argmax(labels, -1); for "
                f"float ids, labels.astype(jnp.int32)."
            )
        return labels

    def _hits(self, predictions: jax.Array, labels: jax.Array) -> jax.Array:
        cls = type(self).__name__
        if predictions.shape == labels.shape:
            if not jnp.issubdtype(predictions.dtype, jnp.integer):
                raise TypeError(
                    f"{cls}: predictions of the shape of the labels {labels.shape} must be "
                    f"integer class ids, got {describe(predictions)}. Fix: pass scores of "
                    f"shape {labels.shape + ('classes',)}, or class ids, e.g. "
                    f"jnp.argmax(logits, -1) or (probabilities > 0.5).astype(jnp.int32)."
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
