"""Guards of pax.optim: loss-scaling mistakes, hyper-parameter checks, inject_hyperparams masks.

Each mistake has a test that it is refused with the fix, next to a test of the correct program.
"""

import jax
import jax.numpy as jnp
import jmp
import numpy as np
import optax
import pytest

import pax

X = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
Y = jax.random.normal(jax.random.PRNGKey(1), (8, 1))


def mse(params, model, x, y):
    model = model.update(params)
    return jnp.mean((model(x) - y) ** 2)


def loss_fn(params, model, inputs):
    model = model.update(params)
    loss = jnp.mean((model(inputs[0]) - inputs[1]) ** 2)
    return loss, (loss, model)


def optax_run(tx, net, n_steps):
    """Plain optax on model.parameters(): the parameter leaves after `n_steps`."""
    params = net.parameters()
    state = tx.init(params)
    for _ in range(n_steps):
        grads = jax.grad(mse)(params, net, X, Y)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return jax.tree_util.tree_leaves(params)


def assert_leaves_close(got, expected, rtol=1e-6):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=rtol, atol=1e-7)


def scaled(opt, scale=2.0**10, dynamic=False):
    kind = jmp.DynamicLossScale if dynamic else jmp.StaticLossScale
    return pax.optim.with_loss_scale(opt, kind(jnp.float32(scale)))


# --- 1a: a step that forgets opt.scale_loss ---------------------------------------------------

FORGOT = (
    r"LossScaledOptimizer.step: scale_loss was not called on this optimizer since its last "
    r"step.*divide them by the loss scale.*Fix: .*"
    r"grads = jax.grad\(lambda p: opt.scale_loss\(loss_fn\(p\)\)\)\(params\)"
)


def test_jitted_step_without_scale_loss_is_refused():
    net = pax.nn.Linear(3, 1)
    opt = scaled(pax.optim.sgd(net.parameters(), 0.1))

    @jax.jit
    def step(net, opt, x, y):
        grads = jax.grad(mse)(net.parameters(), net, x, y)  # the unscaled loss
        return opt.step(grads, net), opt

    with pytest.raises(RuntimeError, match=FORGOT):
        step(net, opt, X, Y)


def test_eager_step_needs_scale_loss_since_the_last_step():
    net = pax.nn.Linear(3, 1)
    opt = scaled(pax.optim.sgd(net.parameters(), 0.1))
    grads = jax.grad(lambda p: opt.scale_loss(mse(p, net, X, Y)))(net.parameters())
    net = opt.step(grads, net)  # fine: scale_loss was called
    grads = jax.grad(mse)(net.parameters(), net, X, Y)
    with pytest.raises(RuntimeError, match=r"divide them by the loss scale \(1024\)"):
        opt.step(grads, net)
    with pytest.raises(RuntimeError, match=FORGOT):
        opt.step(grads, net)


def test_scale_loss_inside_grad_inside_jit_trains_as_plain_sgd():
    net = pax.nn.Linear(3, 1)
    opt = scaled(pax.optim.sgd(net.parameters(), 0.1), dynamic=True)

    @jax.jit
    def step(net, opt, x, y):
        grads = jax.grad(lambda p: opt.scale_loss(mse(p, net, x, y)))(net.parameters())
        return opt.step(grads, net), opt

    expected = optax_run(optax.sgd(0.1), net, 3)
    for _ in range(3):
        net, opt = step(net, opt, X, Y)
    assert bool(opt.last_step_finite)
    assert_leaves_close(jax.tree_util.tree_leaves(net.parameters()), expected)


@pytest.mark.parametrize("jit", [True, False])
def test_build_update_fn_with_loss_scale_matches_optax(jit):
    net = pax.nn.Linear(3, 1)
    opt = scaled(pax.optim.adam(net.parameters(), 1e-2), dynamic=True)
    update_fn = pax.utils.build_update_fn(loss_fn, jit=jit)
    expected = optax_run(optax.adam(1e-2), net, 3)
    for _ in range(3):
        _, net, opt = update_fn(net, opt, (X, Y))
    assert_leaves_close(jax.tree_util.tree_leaves(net.parameters()), expected, rtol=1e-5)


def test_loss_scaled_in_another_jitted_function_is_declared_with_loss_scaled():
    net = pax.nn.Linear(3, 1)
    opt = scaled(pax.optim.sgd(net.parameters(), 0.1))

    @jax.jit
    def scaled_grads(net, opt, x, y):  # a copy of opt: its scale_loss is not seen by step
        return jax.grad(lambda p: opt.scale_loss(mse(p, net, x, y)))(net.parameters())

    grads = scaled_grads(net, opt, X, Y)
    with pytest.raises(RuntimeError, match=r"loss_scaled=True"):
        opt.step(grads, net)
    with pytest.raises(TypeError, match=r"loss_scaled must be True or False, got 'yes'"):
        opt.step(grads, net, loss_scaled="yes")

    # The correct program: accumulate two (cached, so untraced) calls, then declare it.
    expected = optax_run(optax.sgd(0.1), net, 1)
    total = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, grads, scaled_grads(net, opt, X, Y))
    new = opt.step(total, net, loss_scaled=True)
    assert_leaves_close(jax.tree_util.tree_leaves(new.parameters()), expected)


# --- 1b: loss scaling twice ---------------------------------------------------------------------


def test_loss_scaling_twice_is_refused():
    net = pax.nn.Linear(3, 1)
    once = scaled(pax.optim.sgd(net.parameters(), 0.1))
    with pytest.raises(
        TypeError,
        match=r"with_loss_scale: the optimizer is already loss-scaled.*unscale the gradients "
        r"twice.*Fix: wrap once, pax.optim.with_loss_scale\(opt.inner, loss_scale\)",
    ):
        scaled(once)
    rewrapped = scaled(once.inner)  # the fix
    assert isinstance(rewrapped.inner, pax.optim.OptaxOptimizer)


# --- 1c: a static scale beyond float16 ----------------------------------------------------------


def test_static_scale_beyond_float16_is_refused():
    net = pax.nn.Linear(3, 1)
    opt = pax.optim.sgd(net.parameters(), 0.1)
    with pytest.raises(
        ValueError,
        match=r"with_loss_scale: the static loss scale 1048576 is beyond float16's range "
        r"\(its largest value is 65504\).*Fix: jmp.DynamicLossScale\(jnp.float32\(2\*\*15\)\)",
    ):
        pax.optim.with_loss_scale(opt, jmp.StaticLossScale(jnp.float32(2.0**20)))
    for bad in (0.0, -8.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"the loss scale must be a finite number > 0"):
            pax.optim.with_loss_scale(opt, jmp.StaticLossScale(jnp.float32(bad)))
    with pytest.raises(ValueError, match=r"the loss scale must be a finite number > 0"):
        pax.optim.with_loss_scale(opt, jmp.DynamicLossScale(jnp.float32(0.0)))
    with pytest.raises(TypeError, match=r"the loss scale must be a scalar.*Fix: jmp"):
        pax.optim.with_loss_scale(opt, jmp.StaticLossScale(jnp.ones(2)))


def test_float16_training_with_a_static_scale_in_range_and_a_large_dynamic_one():
    policy = jmp.Policy(jnp.float32, jnp.float16, jnp.float32)
    update_fn = pax.utils.build_update_fn(loss_fn)
    for loss_scale in (
        jmp.StaticLossScale(jnp.float32(2.0**15)),
        jmp.DynamicLossScale(jnp.float32(2.0**20)),  # comes down by itself
    ):
        net = pax.nn.MLP([3, 16, 1]).mixed_precision(policy)
        opt = pax.optim.with_loss_scale(pax.optim.adam(net.parameters(), 1e-2), loss_scale)
        losses = []
        for _ in range(20):
            loss, net, opt = update_fn(net, opt, (X, Y))
            losses.append(float(loss))
        assert bool(opt.last_step_finite) and losses[-1] < losses[0]


# --- 1d: hyperparameters through the wrapper ----------------------------------------------------


def test_hyperparams_are_forwarded_to_the_wrapped_optimizer():
    net = pax.nn.Linear(3, 1)
    opt = scaled(pax.optim.adamw(net.parameters(), 1e-2, weight_decay=0.1))
    np.testing.assert_allclose(opt.learning_rate, 1e-2)
    np.testing.assert_allclose(opt.hyperparams["weight_decay"], 0.1)
    opt.learning_rate = 1e-3
    np.testing.assert_allclose(opt.inner.learning_rate, 1e-3)
    opt.set_hyperparams(weight_decay=0.0)
    np.testing.assert_allclose(opt.inner.hyperparams["weight_decay"], 0.0)

    @jax.jit
    def step(net, opt, lr):
        opt.learning_rate = lr  # set inside the jitted step, returned with the optimizer
        grads = jax.grad(lambda p: opt.scale_loss(mse(p, net, X, Y)))(net.parameters())
        return opt.step(grads, net), opt

    new, opt = step(net, opt, 0.0)
    assert_leaves_close(
        jax.tree_util.tree_leaves(new.parameters()), jax.tree_util.tree_leaves(net.parameters())
    )
    np.testing.assert_allclose(opt.learning_rate, 0.0)


class PlainSGD(pax.Optimizer):
    def __init__(self, params, learning_rate=0.1):
        self.learning_rate = learning_rate

    def step(self, grads, model):
        new = jax.tree_util.tree_map(
            lambda p, g: p - self.learning_rate * g, model.parameters(), grads
        )
        return model.update(new)


def test_hyperparams_of_a_wrapped_optimizer_that_has_none():
    net = pax.nn.Linear(3, 1)
    opt = scaled(PlainSGD(net.parameters(), 0.5))
    assert opt.learning_rate == 0.5  # a plain attribute is forwarded too
    with pytest.raises(
        AttributeError,
        match=r"LossScaledOptimizer.hyperparams: the wrapped PlainSGD has no 'hyperparams'",
    ):
        opt.hyperparams
    with pytest.raises(AttributeError, match=r"the wrapped PlainSGD has no 'set_hyperparams'"):
        opt.set_hyperparams(learning_rate=0.1)


# --- 2: hyper-parameters of the ready-made optimizers -------------------------------------------

NUMERIC = {
    "sgd": ("learning_rate", "momentum"),
    "adam": ("learning_rate", "b1", "b2", "eps"),
    "adamw": ("learning_rate", "b1", "b2", "eps", "weight_decay"),
}
BAD_NUMBERS = {
    "None": (None, TypeError, r"got None"),
    "string": ("1e-3", TypeError, r"got the string '1e-3'.*Fix: {arg}=float\('1e-3'\)"),
    "negative": (-1.0, ValueError, r"got -1.0\. Fix: {arg}="),
    "wrong shape": (jnp.ones(2), ValueError, r"one scalar for every parameter, got f32\[2\]"),
    "integer array": (jnp.array(1), TypeError, r"got i32\[\]\. Fix: {arg}=float\(value\)"),
    "bool": (True, TypeError, r"got True \(a bool\)\. Fix: {arg}="),
}
SWEEP = [
    (alias, arg, case)
    for alias, args in NUMERIC.items()
    for arg in args
    for case in BAD_NUMBERS
    if not (arg == "momentum" and case == "None")  # momentum=None is optax's "no momentum"
]


def build(alias, **kwargs):
    kwargs.setdefault("learning_rate", 1e-2)
    return getattr(pax.optim, alias)(pax.nn.Linear(3, 1).parameters(), **kwargs)


@pytest.mark.parametrize(("alias", "arg", "case"), SWEEP)
def test_bad_hyperparameters_are_refused_at_construction(alias, arg, case):
    value, error, detail = BAD_NUMBERS[case]
    match = rf"pax\.optim\.{alias}: {arg} must be a number.*" + detail.format(arg=arg)
    with pytest.raises(error, match=match):
        build(alias, **{arg: value})


@pytest.mark.parametrize("alias", list(NUMERIC))
@pytest.mark.parametrize("value", [None, "yes", 1, jnp.array(True)])
def test_nesterov_must_be_a_bool(alias, value):
    kwargs = {"momentum": 0.9} if alias == "sgd" else {}
    with pytest.raises(
        TypeError, match=rf"pax\.optim\.{alias}: nesterov must be a bool.*nesterov=True"
    ):
        build(alias, nesterov=value, **kwargs)


def test_out_of_range_values_name_the_range():
    with pytest.raises(ValueError, match=r"adam: b1 must be a number in \[0, 1\), got 1.0"):
        build("adam", b1=1.0)
    with pytest.raises(ValueError, match=r"sgd: momentum must be a number in \[0, 1\], got 1.5"):
        build("sgd", momentum=1.5)
    with pytest.raises(ValueError, match=r"learning_rate must be a number > 0, got 0"):
        build("sgd", learning_rate=0)
    with pytest.raises(ValueError, match=r"adamw: eps must be a number >= 0, got nan"):
        build("adamw", eps=float("nan"))
    with pytest.raises(ValueError, match=r"nesterov=True has no effect without momentum"):
        build("sgd", nesterov=True)


def test_unparsable_string_and_other_types():
    with pytest.raises(TypeError, match=r"got the string 'fast'\. Fix: learning_rate=1e-3\."):
        build("adam", learning_rate="fast")
    with pytest.raises(TypeError, match=r"b2 must be a number in \[0, 1\), got \[0.9\] \(list\)"):
        build("adam", b2=[0.9])


def test_params_must_come_first():
    net = pax.nn.Linear(3, 1)
    with pytest.raises(
        TypeError,
        match=r"pax\.optim\.adam: params must be model.parameters\(\) \(a pax.Module\), got "
        r"None.*Fix: opt = pax\.optim\.adam\(model.parameters\(\), 1e-3\)",
    ):
        pax.optim.adam(None, 1e-3)
    with pytest.raises(TypeError, match=r"got 0.001 \(the arguments are swapped"):
        pax.optim.adamw(1e-3, net.parameters())


def test_schedules_are_checked_once_at_construction():
    with pytest.raises(TypeError, match=r"learning_rate schedule must return a scalar number"):
        build("adam", learning_rate=lambda count: "1e-3")
    with pytest.raises(TypeError, match=r"calling it with step 0 failed \(ZeroDivisionError"):
        build("sgd", learning_rate=lambda count: 1 / 0)


def test_valid_hyperparameters_of_every_form_match_optax():
    net = pax.nn.Linear(3, 1)
    warmup = optax.linear_schedule(0.0, 1e-2, 2)  # starts at 0: fine for a schedule
    cases = [
        (pax.optim.sgd(net.parameters(), 1), optax.sgd(1.0)),  # an int learning rate
        (pax.optim.sgd(net.parameters(), 0.1, momentum=None), optax.sgd(0.1)),
        (
            pax.optim.sgd(net.parameters(), 0.1, momentum=1, nesterov=True),
            optax.sgd(0.1, momentum=1.0, nesterov=True),
        ),
        (pax.optim.adam(net.parameters(), np.float32(1e-2), b1=0), optax.adam(1e-2, b1=0.0)),
        (pax.optim.adam(net.parameters(), jnp.float32(1e-2), eps=0), optax.adam(1e-2, eps=0.0)),
        (pax.optim.adam(net.parameters(), warmup), optax.adam(warmup)),
        (
            pax.optim.adamw(net.parameters(), 1e-2, b2=np.float64(0.99), weight_decay=0),
            optax.adamw(1e-2, b2=0.99, weight_decay=0.0),
        ),
    ]
    for opt, tx in cases:
        got = net
        for _ in range(3):
            got = opt.step(jax.grad(mse)(got.parameters(), got, X, Y), got)
        assert_leaves_close(jax.tree_util.tree_leaves(got.parameters()), optax_run(tx, net, 3))


def test_an_int_hyperparameter_is_stored_as_a_float():
    # Before: weight_decay=0 became an int32 hyper-parameter, and setting 1e-2 truncated it to 0.
    opt = build("adamw", weight_decay=0)
    opt.set_hyperparams(weight_decay=1e-2)
    np.testing.assert_allclose(opt.hyperparams["weight_decay"], 1e-2)
    opt = build("sgd", learning_rate=1)
    opt.learning_rate = 1e-4
    np.testing.assert_allclose(opt.learning_rate, 1e-4)


def test_set_hyperparams_refuses_what_it_would_misread():
    opt = build("adam")
    with pytest.raises(
        TypeError, match=r"learning_rate must be a number, got '1e-4' \(str\).*float\('1e-4'\)"
    ):
        opt.learning_rate = "1e-4"
    with pytest.raises(TypeError, match=r"learning_rate must be a number, got None"):
        opt.set_hyperparams(learning_rate=None)
    with pytest.raises(TypeError, match=r"learning_rate must be a number, got True \(bool\)"):
        opt.learning_rate = True
    as_int = optax.inject_hyperparams(optax.sgd)(learning_rate=1)
    opt = pax.optim.from_optax(as_int)(pax.nn.Linear(3, 1).parameters())
    with pytest.raises(
        TypeError, match=r"learning_rate is an integer hyper-parameter.*would be truncated"
    ):
        opt.learning_rate = 1e-4
    opt.learning_rate = 2  # a whole number is fine
    assert int(opt.learning_rate) == 2


# --- 3: a key-path mask inside optax.inject_hyperparams -----------------------------------------


def no_bias(path):
    return not path.endswith(".bias")


def test_mask_taken_for_a_schedule_names_static_args():
    net = pax.nn.MLP([3, 4, 1])
    for mask in (pax.optim.by_key_path(no_bias), lambda p: {k: no_bias(k) for k in p}):
        tx = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, mask=mask),
        )
        with pytest.raises(
            TypeError,
            match=r"called with the step count.*Fix: .*optax\.inject_hyperparams\(optax\.adamw, "
            r"static_args=\('mask',\)\)",
        ):
            pax.optim.from_optax(tx)(net.parameters())


def test_clip_adamw_key_path_mask_and_readable_learning_rate_match_optax():
    net = pax.nn.MLP([3, 4, 1])
    tx = optax.chain(
        optax.clip_by_global_norm(0.1),
        optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=1e-2, weight_decay=0.5, mask=pax.optim.by_key_path(no_bias)
        ),
    )
    opt = pax.optim.from_optax(tx)(net.parameters())
    np.testing.assert_allclose(opt.learning_rate, 1e-2)
    paths = jax.tree_util.tree_leaves_with_path(net.parameters())
    mask_tree = jax.tree_util.tree_structure(net.parameters()).unflatten(
        [no_bias(jax.tree_util.keystr(p)) for p, _ in paths]
    )
    reference = optax.chain(
        optax.clip_by_global_norm(0.1), optax.adamw(1e-2, weight_decay=0.5, mask=mask_tree)
    )
    step = jax.jit(lambda net, opt, g: (opt.step(g, net), opt))
    got = net
    for _ in range(3):
        got, opt = step(got, opt, jax.grad(mse)(got.parameters(), got, X, Y))
    assert_leaves_close(
        jax.tree_util.tree_leaves(got.parameters()), optax_run(reference, net, 3), rtol=1e-5
    )
