"""`Stack`: n layers of one structure, stored stacked and run with ``jax.lax.scan``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core import lazy, recording
from pax._src.core._jax_compat import trace_state_clean
from pax._src.core.inspect_shapes import iter_modules
from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.core.structure import describe_difference
from pax._src.describe import describe
from pax._src.nn import _validate as v

_SAME_LAYERS_FIX = (
    "Every layer of a Stack must have the structure of the first: the same class, "
    "attributes, static values (sizes, flags) and array shapes and dtypes. Fix: build them "
    "with one function of the key (a function or lambda they hold must be defined outside "
    "make_layer: one made inside is a new object per layer), or keep layers that differ "
    "outside the Stack (e.g. pax.nn.Sequential(first, pax.nn.Stack(...), last))."
)


def _unroll(cls: str, unroll: Any) -> int | bool:
    if isinstance(unroll, bool):
        return unroll
    return v.positive_int(cls, "unroll", unroll)


def _stack_layers(cls: str, layers: Sequence[Any]) -> Module:
    """One module of the layers' structure whose every array has a leading axis `len(layers)`."""
    if not layers:
        raise ValueError(f"{cls}: needs at least one layer, got none. Fix: pass n >= 1 layers.")
    first = layers[0]
    seen: dict[int, int] = {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, Module):
            raise TypeError(
                f"{cls}: layer {i} is a {describe(layer)}, not a pax module. Fix: make_layer "
                f"(or the list given to from_layers) must return pax modules, e.g. "
                f"lambda key: pax.nn.Linear(32, 32, rng_key=key)."
            )
        if id(layer) in seen:
            raise ValueError(
                f"{cls}: layers {seen[id(layer)]} and {i} are the same module object, so "
                f"they would start with the same weights. Fix: build a new layer for each "
                f"key, e.g. lambda key: pax.nn.Linear(32, 32, rng_key=key)."
            )
        seen[id(layer)] = i
        diff = describe_difference(first, layer, check_shapes=True, names=("layer 0", f"layer {i}"))
        if diff is None and jax.tree_util.tree_structure(first) != jax.tree_util.tree_structure(
            layer
        ):
            diff = "the treedefs differ"
        if diff is not None:
            raise ValueError(f"{cls}: layer {i} differs from layer 0 {diff}. {_SAME_LAYERS_FIX}")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)


class Stack(Module):
    r"""`n` layers of one structure, stored stacked and applied in order with ``jax.lax.scan``.

    Each layer gets its own key (``make_layer(key)``, keys split from `rng_key`), so the layers
    start with independent weights. They are kept as one module, ``stacked``, of the layer's
    class whose every array has a leading axis of size `n`; ``stack(x)`` scans over that axis,
    ``x -> layer_i(x)``, so a deep model is traced and compiled once per layer structure, not
    once per layer. The layers' states (BatchNorm statistics, Dropout keys) are carried through
    the scan and come back updated. ``parameters()``, ``freeze()``, optimizers, ``pax.save``
    and ``jax.jit`` see the stacked arrays, classified as the layer classifies them. A stacked
    array is frozen or trainable as a whole: to freeze some layers, split the stack,
    ``pax.nn.Sequential(stack[:3], stack[3:].freeze())`` (``freeze(where=r"^\.blocks\[3\]\.")``
    says so). ``summary(*inputs)`` shows the ``stacked`` rows as ``Linear x4`` with one
    layer's input, output and array shapes, and counts as ``4x72`` (layers x per layer).

    Every layer must map `x` to a value of the same shape and dtype. Layers that change the
    shape go outside: ``pax.nn.Sequential(embed, pax.nn.Stack(...), head)``.

    Args:
      make_layer: ``make_layer(key)`` returns a new pax module built with that key.
      n: the number of layers.
      remat: run each layer under ``jax.checkpoint`` (recompute its activations in the
        backward pass instead of keeping them: less memory, more compute).
      unroll: how many layers each step of the scan runs (``jax.lax.scan``'s `unroll`).
      rng_key: the key split into the `n` layer keys; default `pax.next_rng_key()`.

    Raises:
      TypeError: if `make_layer` is not callable or returns something other than a module.
      ValueError: if `n` or `unroll` is not a positive int, or the layers differ in structure.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> stack = pax.nn.Stack(lambda key: pax.nn.Linear(8, 8, rng_key=key), 4)
      >>> stack.stacked.weight.shape
      (4, 8, 8)
      >>> stack(jnp.ones((2, 8))).shape
      (2, 8)
      >>> len(stack), stack[0].weight.shape
      (4, (8, 8))
      >>> net = pax.nn.Sequential(*stack.unstack())  # the same layers, unrolled
      >>> bool(jnp.allclose(net(jnp.ones((2, 8))), stack(jnp.ones((2, 8))), atol=1e-5))
      True
    """

    stacked: Module

    def __init__(
        self,
        make_layer: Callable[[jax.Array], Module],
        n: int,
        *,
        remat: bool = False,
        unroll: int | bool = 1,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        if isinstance(make_layer, Module) or not callable(make_layer):
            raise TypeError(
                f"{cls}: make_layer must be a function of a key returning a module, got "
                f"{describe(make_layer)}. Fix: pax.nn.Stack(lambda key: pax.nn.Linear(32, 32, "
                f"rng_key=key), n), or pax.nn.Stack.from_layers([...]) for existing modules."
            )
        n = v.positive_int(cls, "n", n)
        keys = jax.random.split(resolve_rng_key(rng_key), n)
        self._setup([make_layer(k) for k in keys], remat, unroll)

    def _setup(self, layers: Sequence[Any], remat: bool, unroll: int | bool) -> None:
        cls = type(self).__name__
        self.n = len(layers)
        self.remat = v.boolean(cls, "remat", remat)
        self.unroll = _unroll(cls, unroll)
        self.stacked = _stack_layers(cls, layers)

    @classmethod
    def from_layers(
        cls, layers: Sequence[Module], *, remat: bool = False, unroll: int | bool = 1
    ) -> Stack:
        """Stacks existing layers (all of one structure) into a `Stack`; the converse of `unstack`.

        Raises:
          TypeError: if an element is not a pax module.
          ValueError: if the list is empty, holds one module twice, or a layer's structure
            (class, static values, array shapes or dtypes) differs from the first's.

        Example:
          >>> import jax, pax
          >>> layers = [pax.nn.Linear(4, 4, rng_key=jax.random.PRNGKey(i)) for i in range(3)]
          >>> stack = pax.nn.Stack.from_layers(layers)
          >>> len(stack), stack.stacked.bias.shape
          (3, (3, 4))
        """
        if isinstance(layers, Module) or not isinstance(layers, Sequence):
            raise TypeError(
                f"{cls.__name__}.from_layers: layers must be a list of modules, got "
                f"{describe(layers)}. Fix: {cls.__name__}.from_layers([layer0, layer1, ...])."
            )
        stack = cls.__new__(cls)
        Module.__init__(stack)
        stack._setup(list(layers), remat, unroll)
        return stack

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> Module: ...

    @overload
    def __getitem__(self, index: slice) -> Stack: ...

    def __getitem__(self, index: int | slice) -> Module | Stack:
        """Layer `index` as an ordinary module (its arrays are slices of the stacked ones), or
        for a slice, a `Stack` of those layers (same `remat` and `unroll`).

        Raises:
          IndexError: for an index outside ``[-n, n)``.
          ValueError: for a slice that selects no layer.
          TypeError: for an index that is neither an int nor a slice.

        Example:
          >>> import pax
          >>> stack = pax.nn.Stack(lambda key: pax.nn.Linear(3, 3, rng_key=key), 4)
          >>> type(stack[0]).__name__, len(stack[1:3]), stack[::2].stacked.weight.shape
          ('Linear', 2, (2, 3, 3))
        """
        cls = type(self).__name__
        if isinstance(index, slice):
            picked = list(range(self.n))[index]
            if not picked:
                raise ValueError(
                    f"{cls}: the slice {index} selects no layer of a Stack of {self.n}. Fix: "
                    f"a slice with at least one layer, e.g. stack[:{self.n}]."
                )
            new = self.copy()
            contiguous = index.step in (None, 1)
            rows = slice(picked[0], picked[-1] + 1) if contiguous else np.asarray(picked)
            new.stacked = jax.tree_util.tree_map(lambda x: x[rows], self.stacked)
            new.n = len(picked)
            return new
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(
                f"{cls}: layers are indexed by an int or a slice, got {index!r}. Fix: stack[i] "
                f"with 0 <= i < {self.n}, stack[a:b], or stack.unstack() for the list of layers."
            )
        if not -self.n <= index < self.n:
            raise IndexError(
                f"{cls}: layer index {index} is out of range for a Stack of {self.n} layers. "
                f"Fix: use an index in [-{self.n}, {self.n})."
            )
        i = index % self.n
        return jax.tree_util.tree_map(lambda x: x[i], self.stacked)

    def unstack(self) -> list[Module]:
        """Returns the `n` layers as a list of ordinary modules (the converse of `from_layers`).

        Example:
          >>> import pax
          >>> stack = pax.nn.Stack(lambda key: pax.nn.Linear(3, 3, rng_key=key), 2)
          >>> [layer.weight.shape for layer in stack.unstack()]
          [(3, 3), (3, 3)]
        """
        return [self[i] for i in range(self.n)]

    # The native lazy protocol (pax/_src/core/lazy.py): layers built with input size None
    # (``lambda key: pax.nn.Linear(None, 8, rng_key=key)``) are initialized by
    # ``stack.lazy_init(x)``; the scan copies each layer, so the Stack initializes them itself.

    def _lazy_pending(self) -> bool:
        return bool(lazy.pending_paths(self.stacked))

    def _lazy_initialize(self, args: tuple, kwargs: dict) -> None:
        """Initializes every layer from the call's argument shapes (each layer's input has the
        Stack input's shape), each with the key it drew when built, and stacks them again."""
        example = lazy.materialize(jax.tree_util.tree_map(_spec, (args, kwargs)))
        # Native layers use their own key; only pax.from_haiku layers draw one (a throwaway key
        # while the forward pass is traced: that copy only passes shapes on).
        base = resolve_rng_key(None) if trace_state_clean() else jax.random.PRNGKey(0)
        layers = [
            lazy.initialize(self[i], *example, who="lazy_init", rng_key=jax.random.fold_in(base, i))
            for i in range(self.n)
        ]
        self.stacked = _stack_layers(type(self).__name__, layers)

    def _lazy_describe(self) -> str:
        pending = [(m, k) for _, m, k in lazy.lazy_modules_with_path(self.stacked) if k.pending(m)]
        layer = pending[0][1].describe(pending[0][0]) if pending else "layers"
        return f"{type(self).__name__}(n={self.n}) of {layer}"

    def _stacked_layers(self) -> tuple[str, int]:
        """The hook of `summary` and `freeze(where=...)`: ``stacked`` holds `n` layers."""
        return "stacked", self.n

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs ``x = layer_i(x, *args, **kwargs)`` for i = 0..n-1 and returns `x`.

        `args` and `kwargs` (e.g. an attention mask) are passed unchanged to every layer.

        Raises:
          ValueError: if a layer returns a value of another shape or dtype than its input, or
            changes its own structure; or if a stacked array's leading axis is not `n` (the
            arrays were sliced or replaced by hand: slice the Stack instead, ``stack[:2]``).
        """
        if self._lazy_pending():  # layers built with input size None: see `_lazy_initialize`
            lazy.first_call(self, (x, *args), kwargs)
        cls = type(self).__name__
        stacked = self.stacked
        _check_leading_axes(cls, stacked, self.n)
        leaves_in, treedef = jax.tree_util.tree_flatten(stacked)

        def body(carry: Any, layer: Any) -> tuple[Any, list[Any]]:
            if recording.ACTIVE:  # summary(*inputs): one layer's calls shown as stacked's
                recording.alias(_modules(layer), _modules(stacked))
            old = jax.tree_util.tree_leaves(layer)
            out = layer(carry, *args, **kwargs)
            _check_carry(cls, carry, out)
            # Flattening the layer here also tells pax that its changes are returned.
            new, new_def = jax.tree_util.tree_flatten(layer)
            if new_def != treedef:
                diff = describe_difference(stacked, layer, names=("before", "after"))
                raise ValueError(
                    f"{cls}: a layer changed its structure when called ({diff}); the layers "
                    f"of a Stack may change their arrays (states) but not their attributes "
                    f"or static values. Fix: keep per-call values in registered state."
                )
            # Only the leaves the call replaced (states) come out of the scan.
            return out, [b if b is not a else None for a, b in zip(old, new)]

        if self.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        x, changed = jax.lax.scan(body, x, stacked, length=self.n, unroll=self.unroll)
        if any(c is not None for c in changed):
            leaves = [a if c is None else c for a, c in zip(leaves_in, changed)]
            self.stacked = jax.tree_util.tree_unflatten(treedef, leaves)
        return x


def _modules(module: Module) -> list[Any]:
    return [sub for _, _, sub in iter_modules(module)]


def _spec(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct) or not hasattr(x, "shape"):
        return x
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype)


def _check_carry(cls: str, before: Any, after: Any) -> None:
    """Raises unless `after` has the structure, shapes and dtypes of `before`."""
    tb, ta = jax.tree_util.tree_structure(before), jax.tree_util.tree_structure(after)
    same = tb == ta and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after))
    )
    if not same:
        got = jax.tree_util.tree_map(describe, after)
        want = jax.tree_util.tree_map(describe, before)
        raise ValueError(
            f"{cls}: a layer mapped an input {want} to {got}; every layer of a Stack must "
            f"return a value of its input's shape and dtype (it is fed to the next layer). "
            f"Fix: keep the layers that change the shape outside the Stack, e.g. "
            f"pax.nn.Sequential(pax.nn.Linear(in_dim, width), pax.nn.Stack(...), "
            f"pax.nn.Linear(width, out_dim))."
        )


def _check_leading_axes(cls: str, stacked: Any, n: int) -> None:
    """Raises unless every array of `stacked` has a leading axis of size `n` (once per trace)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(stacked):
        shape = np.shape(leaf)
        if shape[:1] == (n,):
            continue
        where = f".stacked{jax.tree_util.keystr(path)}"
        m = shape[0] if shape and 0 < shape[0] < n else max(n - 1, 1)
        sizes = sorted({np.shape(x)[:1] for x in jax.tree_util.tree_leaves(stacked)})
        raise ValueError(
            f"{cls}: {where} is {describe(leaf)}, but a Stack of n={n} layers needs a leading "
            f"axis of size {n} on every stacked array (leading sizes found: "
            f"{', '.join(str(s[0]) if s else 'scalar' for s in sizes)}): the stacked arrays "
            f"were sliced or replaced by hand, which does not update stack.n. Fix: slice the "
            f"Stack itself instead of its arrays, stack = stack[:{m}] (it keeps n and every "
            f"array in step), or give {where} a leading axis of {n}."
        )
