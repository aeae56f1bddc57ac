"""`Collection`: several named metrics updated, computed and reset together."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax

from pax._src.core.module import Module
from pax._src.describe import describe
from pax._src.metrics.base import NOTHING, Metric, refuse_values_update


class Collection(Module):
    """Named metrics (`pax.metrics.Metric`, or other collections) updated as one module.

    Calling the collection routes each keyword to the metric of that name: a tuple is passed
    as positional arguments, a dict as keyword arguments, anything else as the one argument.
    Metrics not named in a call are left unchanged. The call returns ``compute()``, a dict of
    every metric's current value. The metrics are kept in the dict ``metrics`` (a module
    subtree: key paths read ``.metrics['acc'].correct``) and read with ``collection["acc"]``.

    Args:
      **metrics: the metrics, by name.

    Raises:
      ValueError: if no metric is given.
      TypeError: if a value is not a `pax.metrics.Metric` or `Collection`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> metrics = pax.metrics.Collection(loss=pax.metrics.Mean(), acc=pax.metrics.Accuracy())
      >>> logits, labels = jnp.array([[1.0, 0.0], [1.0, 0.0]]), jnp.array([0, 1])
      >>> values = metrics(loss=jnp.array([0.5, 1.5]), acc=(logits, labels))
      >>> {k: v.item() for k, v in values.items()}
      {'loss': 1.0, 'acc': 0.5}
      >>> values = metrics(acc=dict(predictions=logits, labels=labels, mask=jnp.array([1, 0])))
      >>> metrics["acc"].compute().item(), metrics["loss"].count.item()
      (0.666..., 2.0)
      >>> metrics.reset()["acc"].count.item()
      0.0
    """

    names: tuple[str, ...]
    metrics: dict[str, Metric | Collection]

    def __init__(self, **metrics: Metric | Collection) -> None:
        super().__init__()
        cls = type(self).__name__
        if not metrics:
            raise ValueError(
                f"{cls}: no metrics given. Fix: name each one, e.g. "
                f"{cls}(loss=pax.metrics.Mean(), acc=pax.metrics.Accuracy())."
            )
        for name, metric in metrics.items():
            if not isinstance(metric, (Metric, Collection)):
                raise TypeError(
                    f"{cls}: metric {name!r} must be a pax.metrics.Metric or {cls}, got "
                    f"{describe(metric)}. Fix: {name}=pax.metrics.Mean() (or Sum(), "
                    f"Accuracy(), a Metric subclass)."
                )
        self.names = tuple(metrics)  # static: the order given (flattening sorts dict keys)
        self.metrics = dict(metrics)

    def __call__(self, **inputs: Any) -> dict[str, jax.Array]:
        """Updates the named metrics with their inputs; returns every metric's current value.

        Args:
          **inputs: by metric name: a tuple (positional arguments), a dict (keyword
            arguments) or a single value (the one argument).

        Raises:
          ValueError: if a name is not one of the collection's metrics.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> metrics = pax.metrics.Collection(loss=pax.metrics.Mean(), n=pax.metrics.Sum())
          >>> metrics(loss=jnp.array(2.0), n=(jnp.ones(4), None, jnp.array([1, 1, 0, 0])))["n"]
          Array(2., dtype=float32)
        """
        unknown = [name for name in inputs if name not in self.metrics]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: no metric named {', '.join(map(repr, unknown))}; it has "
                f"{', '.join(map(repr, self.names))}. Fix: update only those, or add the metric "
                f"when building the collection."
            )
        for name, value in inputs.items():
            metric: Any = self.metrics[name]  # each metric has its own call signature
            if isinstance(value, tuple):
                metric(*value)
            elif isinstance(value, dict):
                metric(**value)
            else:
                metric(value)
        return self.compute()

    def compute(self) -> dict[str, Any]:
        """Returns ``{name: metric.compute()}`` for every metric, as jax arrays (no host sync).

        Example:
          >>> import pax
          >>> pax.metrics.Collection(n=pax.metrics.Sum()).compute()
          {'n': Array(0., dtype=float32)}
        """
        return {name: self.metrics[name].compute() for name in self.names}

    def reset(self) -> Collection:
        """Resets every metric in place and returns the collection.

        Both ``metrics.reset()`` and ``metrics = metrics.reset()`` work; for a reset copy that
        leaves the original alone: ``metrics.copy().reset()``.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> metrics = pax.metrics.Collection(n=pax.metrics.Sum())
          >>> _ = metrics(n=jnp.ones(3))
          >>> metrics.copy().reset().compute()["n"].item(), metrics.compute()["n"].item()
          (0.0, 3.0)
          >>> _ = metrics.reset()
          >>> metrics.compute()["n"].item()
          0.0
        """
        for name in self.names:
            self.metrics[name].reset()
        return self

    def update(self, other: Any = NOTHING, *rest: Any, **values: Any) -> Collection:
        """Returns a copy merged with trees of this collection's structure (`pax.Module.update`).

        It does not add values: call the collection for that, ``metrics(loss=..., acc=...)``.

        Raises:
          TypeError: if given values (keyword arguments, an array) instead of trees of this
            collection's structure.

        Example:
          >>> import jax, jax.numpy as jnp, pax
          >>> metrics = pax.metrics.Collection(n=pax.metrics.Sum())
          >>> _ = metrics(n=jnp.ones(3))
          >>> zeros = jax.tree_util.tree_map(jnp.zeros_like, metrics.states())
          >>> metrics.update(zeros)["n"].compute().item()
          0.0
        """
        refuse_values_update(self, other, rest, values, call="loss=..., acc=...")
        return super().update(other, *rest)

    def __getitem__(self, name: str) -> Metric | Collection:
        """The metric named `name`.

        Raises:
          KeyError: if there is none, naming the metrics there are.

        Example:
          >>> import pax
          >>> type(pax.metrics.Collection(loss=pax.metrics.Mean())["loss"]).__name__
          'Mean'
        """
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(
                f"{type(self).__name__}: no metric named {name!r}; it has "
                f"{', '.join(map(repr, self.names))}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        """The metric names, in the order given.

        Example:
          >>> import pax
          >>> list(pax.metrics.Collection(b=pax.metrics.Sum(), a=pax.metrics.Mean()))
          ['b', 'a']
        """
        return iter(self.names)

    def __len__(self) -> int:
        """The number of metrics.

        Example:
          >>> import pax
          >>> len(pax.metrics.Collection(a=pax.metrics.Mean()))
          1
        """
        return len(self.names)
