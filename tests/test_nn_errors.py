"""Bad constructor arguments raise at construction; bad inputs name the layer and both shapes."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax import nn

CONSTRUCTION = [
    (lambda: nn.Linear(0, 3), "Linear: in_dim must be a positive int, got 0"),
    (lambda: nn.Linear(3, -2), "Linear: out_dim must be a positive int, got -2"),
    (lambda: nn.Linear(3.0, 2), "Linear: in_dim must be a positive int, got 3.0"),
    (lambda: nn.MLP([3]), r"MLP: dims needs at least \[in_dim, out_dim\]"),
    (lambda: nn.MLP(3), r"MLP: dims needs at least \[in_dim, out_dim\], got 3; e.g. MLP\(\[784"),
    (lambda: nn.MLP([3, 0, 2]), r"MLP: dims\[1\] must be a positive int, got 0"),
    (
        lambda: nn.Conv2D(3, 4, kernel_shape=(3, 3, 3)),
        "Conv2D: kernel_shape must be a positive int or a sequence of 2",
    ),
    (lambda: nn.Conv1D(3, 4, kernel_shape=0), "Conv1D: kernel_shape must be a positive int"),
    (lambda: nn.Conv2D(3, 4, 3, stride=-1), "Conv2D: stride must be"),
    (
        lambda: nn.Conv2D(3, 4, 3, padding="FULL"),
        "Conv2D: unknown padding 'FULL'; use 'SAME', 'VALID'",
    ),
    (
        lambda: nn.Conv2D(3, 4, 3, padding=((1, 1),)),
        r"Conv2D: unknown padding .*2 \(low, high\) pairs",
    ),
    (
        lambda: nn.Conv2D(3, 4, 3, data_format="NHCW"),
        "Conv2D: unknown data_format 'NHCW' for 2 spatial axes; use 'channels_last' "
        r"\(channels on the last axis, the default\) or 'channels_first'",
    ),
    (
        lambda: nn.Conv1D(3, 4, 3, data_format="NHWC"),
        "Conv1D: unknown data_format 'NHWC' for 1 spatial axis; use 'channels_last'",
    ),
    (
        lambda: nn.Conv2D(3, 4, 3, feature_group_count=2),
        "Conv2D: in_dim=3 must be divisible by feature_group_count=2; change in_dim or",
    ),
    (
        lambda: nn.Conv2DTranspose(4, 3, 3, feature_group_count=2),
        "Conv2DTranspose: out_dim=3 must be divisible",
    ),
    (
        lambda: nn.Conv1DTranspose(3, 4, 3, padding=1, output_shape=8),
        "Conv1DTranspose: output_shape needs padding='SAME' or 'VALID'",
    ),
    (
        lambda: nn.LayerNorm(3, axis="last"),
        "LayerNorm: axis must be an int or a non-empty sequence",
    ),
    (
        lambda: nn.LayerNorm(3, create_scale=False, scale_init=pax.initializers.ones),
        "LayerNorm: scale_init is set but create_scale=False",
    ),
    (lambda: nn.LayerNorm(3, eps=-1.0), "LayerNorm: eps must be a number >= 0"),
    (lambda: nn.RMSNorm(0), "RMSNorm: in_dim must be a positive int"),
    (lambda: nn.GroupNorm(6, groups=4), "GroupNorm: in_dim=6 must be divisible by groups=4"),
    (
        lambda: nn.GroupNorm(6, 3, data_format="HWC"),
        "GroupNorm: unknown data_format 'HWC'; use 'channels_last'",
    ),
    (lambda: nn.BatchNorm(3, data_format=1), "BatchNorm: unknown data_format 1; use"),
    (lambda: nn.BatchNorm(3, decay=1.0), r"BatchNorm: decay must be in \[0, 1\)"),
    (
        lambda: nn.BatchNorm(3, create_offset=False, offset_init=pax.initializers.zeros),
        "offset_init is set but create_offset=False",
    ),
    (
        lambda: nn.BatchNorm(3, cross_replica_axis_index_groups=[[0, 1]]),
        "BatchNorm: cross_replica_axis_index_groups needs a cross_replica_axis",
    ),
    (lambda: nn.Dropout(1.0), r"Dropout: rate must be in \[0, 1\), got 1.0"),
    (lambda: nn.Dropout("0.5"), r"Dropout: rate must be a float in \[0, 1\)"),
    (
        lambda: nn.Dropout(0.5, broadcast_dims=1),
        "Dropout: broadcast_dims must be a sequence of ints",
    ),
    (
        lambda: nn.Dropout(0.5, broadcast_dims=(1.5,)),
        r"Dropout: broadcast_dims must be a sequence of ints, got \(1.5,\); e.g. broadcast_dims=\(1,\)",
    ),
    (
        lambda: nn.LayerNorm(3, axis=()),
        r"LayerNorm: axis must be an int or a non-empty sequence of ints, got \(\); e.g. axis=-1",
    ),
    (lambda: nn.Embed(0, 3), "Embed: vocab_size must be a positive int"),
    (lambda: nn.LSTM(3, 0), "LSTM: hidden_dim must be a positive int"),
    (
        lambda: nn.MultiHeadAttention(10, num_heads=3),
        "MultiHeadAttention: in_dim=10 is not divisible by num_heads=3; pass key_size",
    ),
    (lambda: nn.MaxPool(2, padding="FULL"), "MaxPool: unknown padding 'FULL'"),
    (
        lambda: nn.AvgPool(2, data_format="HWC"),
        "AvgPool: unknown data_format 'HWC' for 2 spatial axes; use 'channels_last'",
    ),
    (
        lambda: nn.MaxPool((2, 2), stride=(1, 1, 1)),
        "MaxPool: stride must be a positive int or a sequence of 2 positive ints",
    ),
    (
        lambda: nn.AvgPool((2, 0)),
        "AvgPool: window_shape must be a positive int or a sequence of 2",
    ),
    (lambda: nn.EMA(jnp.zeros(2), decay=1.5), r"EMA: decay must be in \[0, 1\)"),
    (
        lambda: nn.EMA(jnp.zeros(2), 0.9, warmup_length=-1),
        "EMA: warmup_length must be an int >= 0, got -1",
    ),
    (
        lambda: nn.EMA(jnp.zeros(2), 0.9, warmup_length=3),
        "EMA: zero debiasing makes no sense with a warmup",
    ),
]


@pytest.mark.parametrize("make, match", CONSTRUCTION, ids=[m for _, m in CONSTRUCTION])
def test_invalid_constructor_arguments_raise_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


CALLS = [
    (
        lambda: nn.Linear(3, 4)(jnp.ones((2, 5))),
        r"Linear: expected input of shape \(\.\.\., 3\) .*got shape \(2, 5\)",
    ),
    (
        lambda: nn.Linear(3, 4)(jnp.ones(())),
        r"Linear: expected input of shape \(\.\.\., 3\) .*got shape \(\)",
    ),
    (
        lambda: nn.Conv2D(3, 4, 3)(jnp.ones((8, 3))),
        r"Conv2D: expected an input of rank 4 \(N, H, W, C\) or rank 3 \(H, W, C\) with C=3, got shape \(8, 3\)",
    ),
    (
        lambda: nn.Conv2D(3, 4, 3)(jnp.ones((2, 8, 8, 5))),
        r"Conv2D: expected 3 input channels \(channels_last\), got shape \(2, 8, 8, 5\) with 5 channels",
    ),
    (
        lambda: nn.Conv1D(3, 4, 3, data_format="channels_first")(jnp.ones((2, 8, 3))),
        r"Conv1D: expected 3 input channels \(channels_first\), got shape \(2, 8, 3\) with 8 channels",
    ),
    (
        lambda: nn.Conv3DTranspose(3, 4, 3)(jnp.ones((8, 8, 3))),
        r"Conv3DTranspose: expected an input of rank 5 \(N, D, H, W, C\) or rank 4",
    ),
    (
        lambda: nn.Conv1DTranspose(3, 4, 3, stride=2, output_shape=20)(jnp.ones((1, 5, 3))),
        r"Conv1DTranspose: output_shape size 20 cannot come from an input of size 5 with stride 2 "
        r"and SAME padding \(that needs an input of size 10\)",
    ),
    (
        lambda: nn.LayerNorm(3)(jnp.ones((2, 4))),
        r"LayerNorm: expected input of shape \(\.\.\., 3\) .*got shape \(2, 4\)",
    ),
    (
        lambda: nn.LayerNorm(3, axis=2)(jnp.ones((2, 3))),
        r"LayerNorm: axis 2 is out of range for an input of shape \(2, 3\)",
    ),
    (lambda: nn.RMSNorm(3)(jnp.ones((4,))), r"RMSNorm: expected input of shape \(\.\.\., 3\)"),
    (
        lambda: nn.GroupNorm(4, 2)(jnp.ones((4,))),
        r"GroupNorm: expected an input of rank >= 2 .*got shape \(4,\)",
    ),
    (
        lambda: nn.GroupNorm(4, 2)(jnp.ones((2, 3))),
        r"GroupNorm: expected 4 channels on axis -1, got shape \(2, 3\)",
    ),
    (
        lambda: nn.BatchNorm(3)(jnp.ones((2, 4))),
        r"BatchNorm: expected 3 channels on axis 1, got shape \(2, 4\)",
    ),
    (
        lambda: nn.BatchNorm(3)(jnp.ones((3,))),
        r"BatchNorm: expected an input of rank >= 2 with 3 channels .*got shape \(3,\)",
    ),
    (
        lambda: nn.BatchNorm2D(3)(jnp.ones((2, 3))),
        r"BatchNorm2D: expected an input of rank 4 with 3 channels .*got shape \(2, 3\)",
    ),
    (
        lambda: nn.BatchNorm1D(3)(jnp.ones((1, 2, 2, 3))),
        r"BatchNorm1D: expected an input of rank 2 or 3",
    ),
    (
        lambda: nn.Dropout(0.5, broadcast_dims=(3,))(jnp.ones((2, 3))),
        r"Dropout: broadcast axis 3 does not exist for an input of shape \(2, 3\)",
    ),
    (
        lambda: nn.Embed(5, 3)(jnp.ones((2,))),
        r"Embed: ids must be integers, got f32\[2\]\. Fix: ids.astype\(jnp.int32\)",
    ),
    (
        lambda: nn.Embed(5, 3).attend(jnp.ones((2, 4))),
        r"Embed: expected input of shape \(\.\.\., 3\)",
    ),
    (
        lambda: nn.LSTM(3, 4)(jnp.ones((2, 5)), nn.LSTM(3, 4).initial_state(2)),
        r"LSTM: expected input of shape \(\.\.\., 3\)",
    ),
    (
        lambda: nn.GRU(3, 4)(jnp.ones((2, 3)), jnp.zeros((2, 5))),
        r"GRU: expected a state of shape \(2, 4\) for an input of shape \(2, 3\), got \(2, 5\)\. Fix: start from cell.initial_state",
    ),
    (
        lambda: nn.VanillaRNN(3, 4).initial_state(0),
        "initial_state: batch_size must be a positive int",
    ),
    (
        lambda: nn.MultiHeadAttention(4, 2)(jnp.ones((2, 3, 5))),
        r"MultiHeadAttention: expected query of shape \(\.\.\., length, 4\), got shape \(2, 3, 5\)",
    ),
    (
        lambda: nn.MultiHeadAttention(4, 2)(
            jnp.ones((2, 3, 4)), mask=jnp.ones((1, 2, 3, 3, 3), bool)
        ),
        r"MultiHeadAttention: mask of shape \(1, 2, 3, 3, 3\) does not fit the logits \(B, num_heads, T, S\) = \(2, 2, 3, 3\)",
    ),
    (
        lambda: nn.max_pool(jnp.ones((4, 3)), 2),
        r"max_pool: expected an input of rank >= 3 \(\(H, W, C\) with optional leading batch axes, channels_last\), got shape \(4, 3\)",
    ),
    (
        lambda: nn.avg_pool(jnp.ones((4,)), (2,), data_format="channels_first"),
        r"avg_pool: expected an input of rank >= 2 \(\(C, W\) with optional leading batch axes, channels_first\), got shape \(4,\)",
    ),
    (
        lambda: nn.avg_pool(jnp.ones((1, 4, 4, 3)), 2, padding="full"),
        "avg_pool: unknown padding 'full'",
    ),
    (
        lambda: nn.EMA(jnp.zeros(2), 0.9)(jnp.ones(3)),
        r"EMA: the value does not match the initial value: at the root: shape \(2,\)",
    ),
]


@pytest.mark.parametrize("call, match", CALLS, ids=[m[:40] for _, m in CALLS])
def test_bad_inputs_name_the_layer_and_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_activations_must_be_callable():
    with pytest.raises(TypeError, match="MLP: activation must be callable, got 'relu'"):
        nn.MLP([3, 2], activation="relu")
    with pytest.raises(TypeError, match="VanillaRNN: activation must be callable, got None"):
        nn.VanillaRNN(3, 4, activation=None)


def test_lambda_rejects_non_callables_and_modules():
    with pytest.raises(TypeError, match="Lambda: fn must be callable"):
        nn.Lambda(3)
    with pytest.raises(TypeError, match=r"Lambda: fn is already a pax\.Module"):
        nn.Lambda(nn.Identity())


def test_dynamic_unroll_rejects_a_cell_that_changes_structure():
    class Growing(pax.Module):
        def __call__(self, x, state):
            self.extra = 1  # a new static attribute on every step
            return x, state

    with pytest.raises(pax.StructureChangedError, match=r"Growing inside dynamic_unroll.*extra"):
        nn.dynamic_unroll(Growing(), jnp.ones((3, 2)), jnp.zeros(2))


def test_errors_also_raise_under_jit():
    conv = nn.Conv1D(3, 4, 3)
    with pytest.raises(ValueError, match="Conv1D: expected 3 input channels"):
        jax.jit(lambda m, x: m(x))(conv, jnp.ones((1, 5, 2)))


# --- boolean flags ---------------------------------------------------------------------------


_REQUIRED = {
    "EMA": dict(initial_value=jnp.zeros(2), decay=0.9),
    "MultiHeadAttention": dict(in_dim=4, num_heads=2),
    "GroupNorm": dict(in_dim=4, groups=2),
    "VanillaRNN": dict(in_dim=2, hidden_dim=3),
    "MLP": dict(dims=[2, 3]),
    "Stack": dict(make_layer=lambda k: nn.Linear(2, 2, rng_key=k), n=2),
    "DeepRNN": dict(layers=[nn.LSTM(2, 3, rng_key=jax.random.PRNGKey(0))]),
}


_NOT_HERE: set[str] = set()


def _flag_cases():
    cases = []
    for name in nn.__all__:
        cls = getattr(nn, name)
        if not (inspect.isclass(cls) and issubclass(cls, pax.Module)) or name in _NOT_HERE:
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.annotation in ("bool", bool):
                cases.append(pytest.param(name, p.name, id=f"{name}.{p.name}"))
    return cases


def _required(name):
    if name in _REQUIRED:
        return dict(_REQUIRED[name])
    cls = getattr(nn, name)
    params = inspect.signature(cls.__init__).parameters
    args = {"in_dim": 4, "out_dim": 2, "kernel_shape": 3}
    return {k: v for k, v in args.items() if k in params}


def test_every_flag_is_covered():
    names = {c.values[0] for c in _flag_cases()}
    assert {"Linear", "Conv2D", "Conv1DTranspose", "LayerNorm", "BatchNorm", "EMA"} <= names


@pytest.mark.parametrize(("name", "flag"), _flag_cases())
def test_boolean_flags_of_every_layer_are_checked(name, flag):
    cls = getattr(nn, name)
    for bad in ("no", 0, 1, None, jnp.array(True)):
        with pytest.raises(TypeError, match=rf"{name}: {flag} must be a bool.*{flag}=False"):
            cls(**_required(name), **{flag: bad})
    cls(**_required(name), **{flag: np.bool_(True)})
    assert cls(**_required(name), **{flag: False}) is not None


def test_linear_positional_flag_is_checked():
    with pytest.raises(TypeError, match=r"Linear: with_bias must be a bool \(True or False\)"):
        nn.Linear(3, 4, "no")


@pytest.mark.parametrize("flag", ["time_major", "reverse"])
def test_dynamic_unroll_flags_are_checked(flag):
    cell = nn.LSTM(2, 3)
    with pytest.raises(TypeError, match=rf"dynamic_unroll: {flag} must be a bool"):
        nn.dynamic_unroll(cell, jnp.ones((4, 1, 2)), cell.initial_state(1), **{flag: "yes"})
