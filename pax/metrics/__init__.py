"""Stateful metrics as modules: running means, sums and accuracies, updated inside jitted steps.

For losses, use ``optax.losses`` (e.g. ``optax.losses.softmax_cross_entropy_with_integer_labels``)
and feed the per-example values to `Mean`.
"""

from pax._src.metrics.accuracy import Accuracy as Accuracy
from pax._src.metrics.base import Metric as Metric
from pax._src.metrics.collection import Collection as Collection
from pax._src.metrics.mean import Mean as Mean
from pax._src.metrics.mean import Sum as Sum

__all__ = ["Accuracy", "Collection", "Mean", "Metric", "Sum"]
