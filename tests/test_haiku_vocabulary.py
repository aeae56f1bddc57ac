"""pax.haiku's ready-made layers speak pax.nn's argument vocabulary; old names warn for a release."""

import inspect

import jax
import numpy as np
import pytest

import pax

KEY = jax.random.PRNGKey(0)
H = pax.haiku
CONVS = [H.conv_1d, H.conv_2d, H.conv_1d_transpose, H.conv_2d_transpose]
CONV = {"in_dim": 3, "out_dim": 4, "kernel_shape": 3, "rng_key": KEY}
BN = {"in_dim": 3, "rng_key": KEY}
POOL = {"window_shape": (1, 2, 2, 1), "stride": (1, 2, 2, 1), "padding": "VALID"}

# (function, the arguments in new names, old keyword, new keyword)
RENAMED = (
    [(fn, CONV, "in_features", "in_dim") for fn in CONVS]
    + [(fn, CONV, "out_features", "out_dim") for fn in CONVS]
    + [(fn, {**CONV, "dilation": 2}, "rate", "dilation") for fn in (H.conv_1d, H.conv_2d)]
    + [
        (H.batch_norm_2d, BN, "in_features", "in_dim"),
        (H.batch_norm_2d, {**BN, "decay": 0.5}, "decay_rate", "decay"),
        (H.avg_pool, POOL, "strides", "stride"),
        (H.max_pool, POOL, "strides", "stride"),
    ]
)
RENAMED_IDS = [f"{f.__name__}.{old}" for f, _, old, _ in RENAMED]
OLD_NAMES = {"in_features", "out_features", "strides", "decay_rate", "rate"}
LAYERS = [
    "linear", "layer_norm", "batch_norm_2d", "lstm", "gru", "embed", "conv_1d", "conv_2d",
    "conv_1d_transpose", "conv_2d_transpose", "avg_pool", "max_pool",
]  # fmt: skip


def _rename(kwargs, new, old):
    return {(old if k == new else k): value for k, value in kwargs.items()}


def _same(a, b):
    assert a.hk_config == b.hk_config
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("make, kwargs, old, new", RENAMED, ids=RENAMED_IDS)
def test_new_keyword_works_without_a_warning(make, kwargs, old, new):
    assert make(**kwargs).is_initialized  # pytest turns any warning into an error


@pytest.mark.parametrize("make, kwargs, old, new", RENAMED, ids=RENAMED_IDS)
def test_old_keyword_warns_naming_the_new_one_and_builds_the_same_layer(make, kwargs, old, new):
    match = rf"pax\.haiku\.{make.__name__}: `{old}` is deprecated, use `{new}`"
    with pytest.warns(DeprecationWarning, match=match) as record:
        layer = make(**_rename(kwargs, new, old))
    assert len(record) == 1
    assert record[0].filename == __file__  # the warning points at the caller
    _same(layer, make(**kwargs))


@pytest.mark.parametrize("make, kwargs, old, new", RENAMED, ids=RENAMED_IDS)
def test_old_and_new_keyword_together_raise(make, kwargs, old, new):
    match = (
        rf"pax\.haiku\.{make.__name__}: got both `{old}` \(deprecated\) and `{new}`; pass only "
        rf"`{new}`"
    )
    with pytest.raises(TypeError, match=match):
        make(**kwargs, **{old: kwargs[new]})


def test_old_keyword_after_the_new_one_given_positionally_raises():
    with pytest.raises(TypeError, match=r"conv_2d: got both `in_features` .* and `in_dim`"):
        H.conv_2d(3, out_dim=4, kernel_shape=3, in_features=3)
    with pytest.raises(TypeError, match=r"batch_norm_2d: got both `decay_rate` .* and `decay`"):
        H.batch_norm_2d(3, -1, 0.9, decay_rate=0.9)
    with pytest.raises(TypeError, match=r"max_pool: got both `strides` .* and `stride`"):
        H.max_pool(2, 2, "VALID", strides=2)


def test_positional_calls_keep_their_meaning():
    a = H.conv_2d(3, 4, 3, 1, 2, rng_key=KEY)  # the fifth argument: dilation (was rate)
    assert a.hk_config == H.conv_2d(3, 4, 3, dilation=2, rng_key=KEY).hk_config
    assert a.hk_config.arguments()["rate"] == 2
    bn = H.batch_norm_2d(3, -1, 0.5, rng_key=KEY)  # the third: decay (Pax v0.2's decay_rate)
    assert bn.hk_config.arguments()["decay_rate"] == 0.5
    pool = H.avg_pool(2, 1, "SAME")
    assert pool.hk_config.arguments()["strides"] == 1


def test_signatures_show_only_the_new_names():
    for name in LAYERS:
        params = set(inspect.signature(getattr(H, name)).parameters)
        assert not params & OLD_NAMES, (name, params & OLD_NAMES)
        assert params.isdisjoint({"strides", "rate"}), name
        if "rng_key" in params:
            kind = inspect.signature(getattr(H, name)).parameters["rng_key"].kind
            assert kind is inspect.Parameter.KEYWORD_ONLY, name
    for make, _, old, new in RENAMED:
        assert new in inspect.signature(make).parameters
        assert old not in inspect.signature(make).parameters


def test_every_data_format_defaults_to_channels_last():
    found = []
    for name in LAYERS:
        param = inspect.signature(getattr(H, name)).parameters.get("data_format")
        if param is not None:
            assert param.default == "channels_last", name
            found.append(name)
    assert sorted(found) == sorted(["batch_norm_2d", *(f.__name__ for f in CONVS)])


# --- data_format: pax.nn's parser, Haiku's layout strings ----------------------------------

LAYOUTS = [
    (fn, kw, spelling, new)
    for fn, kw, (last, first) in [
        (H.conv_1d, CONV, ("NWC", "NCW")),
        (H.conv_1d_transpose, CONV, ("NWC", "NCW")),
        (H.conv_2d, CONV, ("NHWC", "NCHW")),
        (H.conv_2d_transpose, CONV, ("NHWC", "NCHW")),
        (H.batch_norm_2d, BN, ("NHWC", "NCHW")),
    ]
    for spelling, new in ((last, "channels_last"), (first, "channels_first"))
]
LAYOUT_IDS = [f"{f.__name__}.{s}" for f, _, s, _ in LAYOUTS]


@pytest.mark.parametrize("make, kwargs, spelling, new", LAYOUTS, ids=LAYOUT_IDS)
def test_old_layout_strings_warn_naming_the_new_value(make, kwargs, spelling, new):
    match = (
        rf"pax\.haiku\.{make.__name__}: `data_format={spelling!r}` is deprecated, use "
        rf"`data_format='{new}'`"
    )
    with pytest.warns(DeprecationWarning, match=match) as record:
        layer = make(**kwargs, data_format=spelling)
    assert record[0].filename == __file__
    _same(layer, make(**kwargs, data_format=new))
    # Haiku itself gets its own layout string, as before the rename.
    assert layer.hk_config.arguments()["data_format"] == spelling


@pytest.mark.parametrize("make", [*CONVS, H.batch_norm_2d], ids=lambda f: f.__name__)
@pytest.mark.parametrize("spelling", ["HWC", "channels-last", "nhwc", "NCDHW_"])
def test_unknown_layouts_are_rejected_as_in_pax_nn(make, spelling):
    kwargs = BN if make is H.batch_norm_2d else CONV
    match = (
        rf"pax\.haiku\.{make.__name__}: unknown data_format {spelling!r}.*; use 'channels_last' "
        r"\(channels on the last axis, the default\) or 'channels_first' \(channels on axis 1"
    )
    with pytest.raises(ValueError, match=match):
        make(**kwargs, data_format=spelling)


def test_channels_first_layers_take_channels_first_inputs():
    x = jax.random.normal(KEY, (2, 3, 6, 6))
    conv = H.conv_2d(**CONV, data_format="channels_first")
    assert conv(x).shape == (2, 4, 6, 6)
    bn = H.batch_norm_2d(**BN, data_format="channels_first")
    assert bn(x).shape == x.shape
    assert bn.state["batch_norm/~/mean_ema"]["average"].shape == (1, 3, 1, 1)
