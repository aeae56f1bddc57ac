"""One argument vocabulary in pax.nn: new names, deprecated aliases, one data_format parser."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax import nn
from pax._src.nn import _validate as v

KEY = jax.random.PRNGKey(0)
CONVS = [
    nn.Conv1D,
    nn.Conv2D,
    nn.Conv3D,
    nn.Conv1DTranspose,
    nn.Conv2DTranspose,
    nn.Conv3DTranspose,
]
CONV = {"in_dim": 3, "out_dim": 4, "kernel_shape": 3, "rng_key": KEY}
BN = {"in_dim": 3, "rng_key": KEY}

# (callable, the arguments in new names, old keyword, new keyword)
RENAMED = (
    [(cls, CONV, "in_features", "in_dim") for cls in CONVS]
    + [(cls, CONV, "out_features", "out_dim") for cls in CONVS]
    + [(cls, {**CONV, "dilation": 2}, "rate", "dilation") for cls in CONVS]
    + [(cls, BN, "in_features", "in_dim") for cls in (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D)]
    + [
        (cls, {**BN, "decay": 0.5}, "decay_rate", "decay")
        for cls in (nn.BatchNorm, nn.BatchNorm1D, nn.BatchNorm2D)
    ]
    + [
        (nn.GroupNorm, {"in_dim": 4, "groups": 2, "rng_key": KEY}, "in_features", "in_dim"),
        (nn.MaxPool, {"window_shape": 2, "stride": 1}, "strides", "stride"),
        (nn.AvgPool, {"window_shape": 2, "stride": 1}, "strides", "stride"),
        (nn.MLP, {"dims": [3, 4, 2], "rng_key": KEY}, "features", "dims"),
    ]
)
RENAMED_IDS = [f"{f.__name__}.{old}" for f, _, old, _ in RENAMED]
OLD_NAMES = {"in_features", "out_features", "strides", "decay_rate", "rate", "features"}


def _rename(kwargs, new, old):
    return {(old if k == new else k): value for k, value in kwargs.items()}


def _same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("make, kwargs, old, new", RENAMED, ids=RENAMED_IDS)
def test_new_keyword_works_without_a_warning(make, kwargs, old, new):
    layer = make(**kwargs)  # pytest turns any warning into an error
    expected, stored = kwargs[new], getattr(layer, new)
    if isinstance(stored, tuple):  # sizes per spatial axis, or the MLP's dims
        expected = tuple(expected) if isinstance(expected, list) else (expected,) * len(stored)
    assert stored == expected


@pytest.mark.parametrize("make, kwargs, old, new", RENAMED, ids=RENAMED_IDS)
def test_old_keyword_warns_naming_the_new_one_and_builds_the_same_layer(make, kwargs, old, new):
    match = rf"pax\.nn\.{make.__name__}: `{old}` is deprecated, use `{new}`"
    with pytest.warns(DeprecationWarning, match=match) as record:
        layer = make(**_rename(kwargs, new, old))
    assert len(record) == 1
    assert record[0].filename == __file__  # the warning points at the caller
    _same(layer, make(**kwargs))
    with pytest.warns(DeprecationWarning, match=match):  # the old attribute, for one release
        assert getattr(layer, old) == getattr(layer, new)


@pytest.mark.parametrize("make, kwargs, old, new", RENAMED, ids=RENAMED_IDS)
def test_old_and_new_keyword_together_raise(make, kwargs, old, new):
    match = (
        rf"pax\.nn\.{make.__name__}: got both `{old}` \(deprecated\) and `{new}`; pass only `{new}`"
    )
    with pytest.raises(TypeError, match=match):
        make(**kwargs, **{old: kwargs[new]})


def test_old_keyword_after_the_new_one_given_positionally_raises():
    with pytest.raises(TypeError, match=r"Conv2D: got both `in_features` .* and `in_dim`"):
        nn.Conv2D(3, out_dim=4, kernel_shape=3, in_features=3)
    with pytest.raises(TypeError, match=r"MaxPool: got both `strides` .* and `stride`"):
        nn.MaxPool(2, 1, strides=1)


@pytest.mark.parametrize("fn", [nn.max_pool, nn.avg_pool], ids=lambda f: f.__name__)
def test_pooling_functions_accept_strides_for_one_release(fn):
    x = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 6, 3)
    with pytest.warns(DeprecationWarning, match=rf"pax\.nn\.{fn.__name__}: `strides` .* `stride`"):
        old = fn(x, 2, strides=1)
    np.testing.assert_array_equal(old, fn(x, 2, stride=1))
    with pytest.raises(TypeError, match=rf"{fn.__name__}: got both `strides`"):
        fn(x, 2, stride=1, strides=1)


def test_signatures_show_only_the_new_names():
    for name in nn.__all__:
        obj = getattr(nn, name)
        if not callable(obj) or name == "LSTMState":
            continue
        params = set(inspect.signature(obj).parameters)
        if name != "Dropout":  # `rate` is now only Dropout's probability (convs: `dilation`)
            assert not params & OLD_NAMES, (name, params & OLD_NAMES)
    for make, _, old, new in RENAMED:
        assert new in inspect.signature(make).parameters
        assert old not in inspect.signature(make).parameters


def test_every_data_format_defaults_to_channels_last():
    found = []
    for name in nn.__all__:
        obj = getattr(nn, name)
        if callable(obj) and name != "LSTMState":
            param = inspect.signature(obj).parameters.get("data_format")
            if param is not None:
                assert param.default == "channels_last", name
                found.append(name)
    assert len(found) == 14  # 6 convs, 3 batch norms, GroupNorm, 2 pool modules, 2 functions


# --- data_format: one parser ----------------------------------------------------------------

LAYOUTS = (
    [
        (cls, CONV, spelling, new)
        for cls, (last, first) in zip(
            CONVS, [("NWC", "NCW"), ("NHWC", "NCHW"), ("NDHWC", "NCDHW")] * 2
        )
        for spelling, new in ((last, "channels_last"), (first, "channels_first"))
    ]
    + [
        (cls, BN, spelling, new)
        for cls in (nn.BatchNorm, nn.BatchNorm2D)
        for spelling, new in (("NHWC", "channels_last"), ("NCHW", "channels_first"))
    ]
    + [
        (nn.BatchNorm1D, BN, "NC", "channels_first"),
        (nn.BatchNorm1D, BN, "NWC", "channels_last"),
        (nn.GroupNorm, {"in_dim": 4, "groups": 2, "rng_key": KEY}, "NCHW", "channels_first"),
        (nn.MaxPool, {"window_shape": 2}, "NCHW", "channels_first"),
        (nn.AvgPool, {"window_shape": (2, 2, 2)}, "NDHWC", "channels_last"),
        (nn.Conv2D, CONV, None, "channels_last"),
    ]
)
LAYOUT_IDS = [f"{f.__name__}.{s}" for f, _, s, _ in LAYOUTS]


@pytest.mark.parametrize("make, kwargs, spelling, new", LAYOUTS, ids=LAYOUT_IDS)
def test_old_layout_strings_warn_naming_the_new_value(make, kwargs, spelling, new):
    match = rf"pax\.nn\.{make.__name__}: `data_format={spelling!r}` is deprecated, use `data_format='{new}'`"
    with pytest.warns(DeprecationWarning, match=match) as record:
        layer = make(**kwargs, data_format=spelling)
    assert record[0].filename == __file__
    assert layer.data_format == new
    _same(layer, make(**kwargs, data_format=new))


def test_old_one_dimensional_pooling_layout_names_the_tuple_window():
    x = jnp.arange(2 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 3)
    match = r"MaxPool: `data_format='NWC'` is deprecated, use `data_format='channels_last'` and `window_shape=\(2,\)`"
    with pytest.warns(DeprecationWarning, match=match):
        pool = nn.MaxPool(2, data_format="NWC")
    assert pool.window_shape == (2,)
    np.testing.assert_array_equal(pool(x), nn.MaxPool((2,))(x))
    with pytest.warns(
        DeprecationWarning, match=r"avg_pool: `data_format='NCW'` .* `window_shape=\(2,\)`"
    ):
        old = nn.avg_pool(jnp.moveaxis(x, -1, 1), 2, data_format="NCW")
    new = nn.avg_pool(jnp.moveaxis(x, -1, 1), (2,), data_format="channels_first")
    np.testing.assert_array_equal(old, new)


def test_pooling_axes_come_from_the_window_or_stride():
    x = jnp.ones((2, 4, 4, 4, 3))
    assert nn.max_pool(x, 2).shape == (2, 4, 2, 2, 3)  # an int: two spatial axes
    assert nn.max_pool(x, (2, 2, 2)).shape == (2, 2, 2, 2, 3)
    assert nn.max_pool(x, 2, stride=(2,)).shape == (2, 4, 4, 2, 3)
    assert nn.max_pool(x, (2,), data_format="channels_first").shape == (2, 4, 4, 4, 1)


UNKNOWN = [
    lambda f: nn.Conv2D(**CONV, data_format=f),
    lambda f: nn.Conv1DTranspose(**CONV, data_format=f),
    lambda f: nn.BatchNorm(**BN, data_format=f),
    lambda f: nn.BatchNorm2D(**BN, data_format=f),
    lambda f: nn.GroupNorm(4, 2, data_format=f),
    lambda f: nn.MaxPool(2, data_format=f),
    lambda f: nn.AvgPool(2, data_format=f),
    lambda f: nn.max_pool(jnp.ones((1, 4, 4, 1)), 2, data_format=f),
    lambda f: nn.avg_pool(jnp.ones((1, 4, 4, 1)), 2, data_format=f),
]


@pytest.mark.parametrize("make", UNKNOWN)
@pytest.mark.parametrize("spelling", ["HWC", "channels-last", "nhwc", "NCDHW_"])
def test_every_layer_rejects_an_unknown_layout_the_same_way(make, spelling):
    match = (
        rf"unknown data_format {re.escape(repr(spelling))}.*; use 'channels_last' \(channels on "
        r"the last axis, the default\) or 'channels_first' \(channels on axis 1"
    )
    with pytest.raises(ValueError, match=match):
        make(spelling)


def test_channels_last_is_read_from_data_format():
    assert nn.Conv2D(**CONV).channels_last is True
    assert nn.GroupNorm(4, 2, data_format="channels_first").channels_last is False
    assert nn.BatchNorm(**BN, data_format="channels_first").channels_last is False


# --- the helper itself ----------------------------------------------------------------------


def test_renamed_kwargs_rejects_a_wrong_spec_at_decoration():
    with pytest.raises(TypeError, match=r"renamed_kwargs: .*f must have the parameter 'b'"):

        @v.renamed_kwargs(a="b")
        def f(x):
            return x

    with pytest.raises(
        TypeError, match=r"renamed_kwargs: .*g must have the parameter 'x' and not 'y'"
    ):

        @v.renamed_kwargs(y="x")
        def g(x, y):
            return x


def test_renamed_kwargs_passes_through_and_keeps_the_signature():
    @v.renamed_kwargs(old="new")
    def f(a, new=1, *, other=2):
        return a, new, other

    assert list(inspect.signature(f).parameters) == ["a", "new", "other"]
    assert f(0, 5, other=3) == (0, 5, 3)
    with pytest.warns(DeprecationWarning, match=r"pax\.nn\.f: `old` is deprecated, use `new`"):
        assert f(0, old=7) == (0, 7, 2)


def test_attention_accepts_pax_v02_keywords_with_deprecation_warnings():
    with pytest.warns(DeprecationWarning, match=r"MultiHeadAttention: `w_init_scale` is deprec"):
        old = pax.nn.MultiHeadAttention(
            8, num_heads=2, key_size=4, w_init_scale=0.5, rng_key=jax.random.PRNGKey(0)
        )
    new = pax.nn.MultiHeadAttention(
        8,
        num_heads=2,
        key_size=4,
        w_init=pax.initializers.variance_scaling(0.5),
        rng_key=jax.random.PRNGKey(0),
    )
    np.testing.assert_array_equal(old.query_proj.weight, new.query_proj.weight)
    with pytest.warns(DeprecationWarning, match=r"`model_size` is deprecated, use `out_dim`"):
        assert pax.nn.MultiHeadAttention(8, 2, model_size=6).out_dim == 6
    with pytest.raises(TypeError, match=r"give w_init or the deprecated w_init_scale, not both"):
        pax.nn.MultiHeadAttention(8, 2, w_init=pax.initializers.zeros, w_init_scale=1.0)


def test_attention_per_example_mask_is_shared_by_the_heads():
    # a (B, T, S) mask (B == num_heads here) is per example: the heads axis is inserted
    mha = pax.nn.MultiHeadAttention(8, 2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    mask = jnp.stack([jnp.eye(3, dtype=bool), jnp.tril(jnp.ones((3, 3), bool))])
    np.testing.assert_array_equal(mha(x, mask=mask), mha(x, mask=mask[:, None]))


def test_attention_two_dimensional_mask_is_shared_by_examples_and_heads():
    mha = pax.nn.MultiHeadAttention(8, 2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    causal = jnp.tril(jnp.ones((3, 3), bool))
    np.testing.assert_array_equal(mha(x, mask=causal), mha(x, mask=causal[None, None]))


def test_attention_pax_v02_keyword_form_is_the_square_layer():
    with pytest.warns(DeprecationWarning, match="w_init_scale"):
        mha = pax.nn.MultiHeadAttention(num_heads=4, key_size=4, w_init_scale=0.5)
    assert mha.query_proj.weight.shape == (16, 16) and mha.out_dim == 16
    assert mha(jnp.ones((1, 3, 16))).shape == (1, 3, 16)
    with pytest.raises(TypeError, match=r"MultiHeadAttention: num_heads is required"):
        pax.nn.MultiHeadAttention(16)
    with pytest.raises(TypeError, match=r"MultiHeadAttention: give the input size"):
        pax.nn.MultiHeadAttention(num_heads=4)
