"""A module changed inside a transformation and not returned by it raises at the next pax step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

NOT_RETURNED = r"was changed inside a transformed function .* did not return the module"


def test_batch_norm_passed_to_jit_and_not_returned_raises_at_the_next_call():
    bn = pax.nn.BatchNorm1D(3)
    x = jnp.ones((4, 3))
    jax.jit(lambda m, x: m(x))(bn, x)  # the moving averages are updated on a copy, then lost
    with pytest.raises(RuntimeError, match=r"EMA\.\w+ " + NOT_RETURNED + r"(.|\n)*return y, model"):
        bn(x)


def test_state_changed_under_grad_and_not_returned_raises_at_the_next_view():
    bn = pax.nn.BatchNorm1D(3)

    def loss(params, model, x):
        return jnp.sum(model.update(params)(x))

    jax.grad(loss)(bn.parameters(), bn, jnp.ones((4, 3)))
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        bn.parameters()


def test_optimizer_not_returned_from_a_jitted_step_raises():
    net = pax.nn.Linear(2, 2)
    opt = pax.optim.adam(net.parameters(), 1e-3)

    @jax.jit
    def step(net, opt):
        grads = jax.tree_util.tree_map(jnp.ones_like, net.parameters())
        return opt.step(grads, net)  # opt's moments and count are lost

    net = step(net, opt)
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        net(jnp.ones((1, 2)))


def test_returned_modules_are_fine_over_many_steps():
    bn = pax.nn.BatchNorm1D(3)
    step = jax.jit(lambda m, x: (m(x), m))
    for _ in range(3):
        _, bn = step(bn, jnp.ones((4, 3)) * 2)
    bn(jnp.ones((4, 3)))
    assert float(jnp.abs(bn.mean_ema.average).sum()) > 0

    def body(m, x):
        m(x)
        return m, None

    bn, _ = jax.lax.scan(body, bn, jnp.ones((2, 4, 3)))
    bn.parameters()


def test_discard_state_changes_allows_dropping_them_on_purpose():
    bn = pax.nn.BatchNorm1D(3)
    with pax.discard_state_changes():
        jax.eval_shape(lambda m, x: m(x), bn, jnp.ones((4, 3)))
        jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    np.testing.assert_array_equal(bn(jnp.ones((4, 3))), bn(jnp.ones((4, 3))))


def test_eval_mode_changes_nothing_and_never_raises():
    bn = pax.nn.BatchNorm1D(3).eval()
    jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    bn(jnp.ones((4, 3)))


def test_a_training_step_or_a_save_after_a_lost_change_raises(tmp_path):
    bn = pax.nn.BatchNorm1D(3)

    def loss_fn(params, model, x):
        model = model.update(params)
        loss = jnp.mean(model(x))
        return loss, (loss, model)

    update_fn = pax.utils.build_update_fn(loss_fn)
    opt = pax.optim.sgd(bn.parameters(), 0.1)
    jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        update_fn(bn, opt, jnp.ones((4, 3)))
    jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        pax.save(tmp_path / "bn.npz", bn)


# --- exact tracking: no false alarm on correct programs ---------------------------------------

X = jnp.ones((2, 3))


def _stateless_modules():
    return [pax.haiku.linear(3, 5), pax.haiku.layer_norm(3), pax.nn.Linear(3, 5)]


@pytest.mark.parametrize("make", range(3), ids=["haiku.linear", "haiku.layer_norm", "Linear"])
def test_stateless_modules_in_every_transformation_never_raise(make):
    model = _stateless_modules()[make]
    jax.jit(lambda m, x: m(x))(model, X)
    model(X)
    jax.grad(lambda p, m: jnp.sum(m.update(p)(X)))(model.parameters(), model)
    model.parameters()
    jax.vmap(lambda m, x: m(x), in_axes=(None, 0))(model, X)
    jax.vmap(lambda x: model(x))(X)
    model(X)
    jax.lax.scan(lambda c, x: (c, model(x)), 0.0, X)
    jax.eval_shape(lambda m, x: m(x), model, X)
    jax.jit(jax.grad(lambda p, m: jnp.sum(m.update(p)(X))))(model.parameters(), model)
    model(X)


def test_stateless_module_under_shard_map_never_raises():
    from jax.sharding import PartitionSpec as P

    model = pax.haiku.linear(3, 5)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    xs = jnp.ones((jax.device_count() * 2, 3))
    fn = jax.shard_map(
        lambda m, x: m(x), mesh=mesh, in_specs=(P(), P("batch")), out_specs=P("batch")
    )
    jax.jit(fn)(model, xs)
    model(X)


def test_the_original_pax_haiku_tests_run():
    """Pax v0.2.5's own tests (from_haiku linear, embed, conv1d online and under jit)."""
    fc = pax.haiku.linear(3, 5)
    jax.grad(lambda p, m: jnp.sum(m.update(p)(X)))(fc.parameters(), fc)
    embed = pax.haiku.embed(10, 4)
    jax.grad(lambda p, m: jnp.sum(m.update(p)(jnp.arange(3))))(embed.parameters(), embed)
    conv = pax.haiku.conv_1d(3, 4, 3)
    x = jnp.ones((2, 8, 3))
    online = conv(x)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(conv, x), online, rtol=1e-6)
    np.testing.assert_allclose(conv(x), online, rtol=1e-6)  # the next call: no false alarm


def test_modules_built_inside_a_transformation_never_raise():
    @jax.jit
    def f(x, key):
        mean = pax.metrics.Mean()
        mean(x)
        acc = pax.metrics.Accuracy()
        acc(jnp.ones((2, 3)), jnp.zeros((2,), jnp.int32))
        bn = pax.nn.BatchNorm1D(3)
        bn(x)
        fc = pax.haiku.linear(3, 2, rng_key=key)
        return mean.compute() + acc.compute() + jnp.sum(fc(x)) + jnp.sum(bn(x))

    f(X, jax.random.PRNGKey(0))
    pax.nn.Linear(3, 3)(X)  # the next unrelated pax call
    jax.vmap(lambda x: pax.nn.BatchNorm1D(3)(x[None]))(X)
    pax.nn.Linear(3, 3).parameters()


def test_a_module_built_inside_jit_and_lost_in_a_nested_grad_still_raises():
    @jax.jit
    def f(x):
        bn = pax.nn.BatchNorm1D(3)

        def loss(params, model):
            return jnp.sum(model.update(params)(x))  # the grad's copy changes, not returned

        return jax.grad(loss)(bn.parameters(), bn)

    f(X)
    with pytest.raises(RuntimeError, match=r"EMA\.\w+ " + NOT_RETURNED):
        pax.nn.Linear(3, 3)(X)


def test_nested_transformations_returning_the_model_never_raise():
    bn = pax.nn.BatchNorm1D(3)

    def loss_fn(params, model, x):
        model = model.update(params)
        y = jax.vmap(lambda xi: xi * 2)(model(x))
        return jnp.sum(y), model

    @jax.jit
    def step(model, x):
        grads, model = jax.grad(loss_fn, has_aux=True)(model.parameters(), model, x)
        return grads, model

    for _ in range(2):
        _, bn = step(bn, X)
    bn(X)


def test_threads_tracing_and_eager_never_raise_spuriously():
    import threading

    errors = []
    barrier = threading.Barrier(16)

    def tracing():
        try:
            barrier.wait()
            for i in range(8):
                bn = pax.nn.Sequential(*[pax.nn.BatchNorm1D(3) for _ in range(4)])
                jax.jit(lambda m, x: (m(x), m))(bn, X * (i + 1))
        except Exception as e:
            errors.append(e)

    def eager():
        try:
            net = pax.nn.Linear(3, 3)
            barrier.wait()
            for _ in range(150):
                net(X)
                net.parameters()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=tracing) for _ in range(8)]
    threads += [threading.Thread(target=eager) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_a_lost_change_is_raised_in_the_thread_that_made_it_only():
    import threading

    outcome = {}
    made = threading.Event()
    checked = threading.Event()

    def mistaken():
        bn = pax.nn.BatchNorm1D(3)
        jax.jit(lambda m, x: m(x))(bn, X)  # not returned
        made.set()
        checked.wait(timeout=60)
        try:
            bn(X)
            outcome["mistaken"] = None
        except RuntimeError as e:
            outcome["mistaken"] = str(e)

    def other():
        made.wait(timeout=60)
        net = pax.nn.Linear(3, 3)
        net(X)  # another thread's lost change is not this thread's error
        outcome["other"] = "ok"
        checked.set()

    threads = [threading.Thread(target=mistaken), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert outcome["other"] == "ok"
    assert outcome["mistaken"] is not None
    assert "EMA." in outcome["mistaken"] and "did not return the module" in outcome["mistaken"]


def test_writing_back_the_same_value_is_not_a_change():
    class Echo(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_state_subtree("cache", {"a": jnp.zeros(2)})
            self.register_state("count", jnp.zeros(()))

        def __call__(self, x):
            self.cache = dict(self.cache)  # a new dict holding the same leaves
            self.count = self.count  # the same tracer
            return x

    echo = Echo()
    jax.jit(lambda m, x: m(x))(echo, X)
    echo(X)


def test_a_real_change_of_the_same_structure_still_raises():
    class Counter(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_state_subtree("cache", {"a": jnp.zeros(2)})

        def __call__(self, x):
            self.cache = {"a": self.cache["a"] + 1}
            return x

    counter = Counter()
    jax.jit(lambda m, x: m(x))(counter, X)
    with pytest.raises(RuntimeError, match=r"Counter\.cache " + NOT_RETURNED):
        counter(X)


# --- found by a hostile sweep -----------------------------------------------------------------


class Counter(pax.Module):
    def __init__(self):
        super().__init__()
        self.register_state("count", jnp.zeros((), jnp.int32))
        self.register_parameter("w", jnp.ones(()))

    def __call__(self, x):
        self.count = self.count + 1
        return self.w * x


def test_a_concrete_state_change_under_eager_grad_or_vmap_that_is_lost_raises():
    counter = Counter()

    def loss(params, model, x):
        return model.update(params)(x)  # the count of a copy moves (a concrete value)

    jax.grad(loss)(counter.parameters(), counter, 2.0)
    with pytest.raises(RuntimeError, match=r"Counter\.count " + NOT_RETURNED):
        counter(1.0)
    jax.vmap(lambda m, x: m(x), in_axes=(None, 0))(counter, jnp.ones(3))
    with pytest.raises(RuntimeError, match=r"Counter\.count " + NOT_RETURNED):
        counter(1.0)


def test_eager_grad_of_a_closed_over_module_updates_it_and_never_raises():
    counter = Counter()
    jax.grad(lambda w: counter(w))(1.0)  # the user's own object: its count really moved
    counter(1.0)
    assert int(counter.count) == 2


def test_returning_a_states_view_in_place_of_the_module_is_returning_the_change():
    bn = pax.nn.BatchNorm1D(3)

    @jax.jit
    def step(model, x):
        return model(x), model.states()

    _, states = step(bn, X * 2)
    bn = bn.update(states)
    bn(X)  # no false alarm
    assert float(jnp.abs(bn.mean_ema.average).sum()) > 0

    def loss(params, model, x):
        model = model.update(params)
        return jnp.sum(model(x)), model.states()

    _, states = jax.grad(loss, has_aux=True)(bn.parameters(), bn, X)
    bn = bn.update(states)
    bn(X)


def test_returning_a_parameters_view_still_loses_the_state_change():
    bn = pax.nn.BatchNorm1D(3)
    jax.jit(lambda m, x: (m(x), m.parameters()))(bn, X)  # the statistics are not in the view
    with pytest.raises(RuntimeError, match=r"EMA\.\w+ " + NOT_RETURNED):
        bn(X)
