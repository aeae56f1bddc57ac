"""`Module.unwrap_mixed_precision` when `apply_policy` gave policies to submodules: the error
names the submodules and the fix, and the correct programs (unwrap every policy with `apply`,
unwrap a root policy) work."""

import jax
import jax.numpy as jnp
import jmp
import numpy as np
import pytest

import pax

POLICY = jmp.get_policy("params=float32,compute=bfloat16,output=float32")


def _is_mixed(m):
    return pax.mixed_precision.is_mixed_precision(m)


def _policied_net():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Sequential(pax.nn.Linear(3, 3)))
    return pax.mixed_precision.apply_policy(net, {pax.nn.Linear: POLICY})


def test_unwrap_root_without_policy_names_the_submodules_and_the_fix():
    with pytest.raises(
        TypeError,
        match=r"Sequential.unwrap_mixed_precision: .*no mixed-precision policy of its own, but "
        r"its submodules \.modules\[0\], \.modules\[1\]\.modules\[0\] have one.*"
        r"model\.apply\(lambda m: m\.unwrap_mixed_precision\(\) if "
        r"pax\.mixed_precision\.is_mixed_precision\(m\) else m\)",
    ):
        _policied_net().unwrap_mixed_precision()


def test_unwrap_every_policy_with_apply_works():
    net = _policied_net()
    plain = net.apply(lambda m: m.unwrap_mixed_precision() if _is_mixed(m) else m)
    modules = jax.tree_util.tree_leaves(plain, is_leaf=lambda m: isinstance(m, pax.nn.Linear))
    assert [type(m).__name__ for m in modules] == ["Linear", "Linear"]
    x = jnp.ones((1, 2))
    assert plain(x).dtype == jnp.float32
    np.testing.assert_allclose(plain(x), net(x), rtol=2e-2, atol=2e-2)  # bf16 vs f32


def test_unwrap_module_without_any_policy_keeps_its_message():
    with pytest.raises(TypeError, match=r"Linear.unwrap_mixed_precision: this module has no"):
        pax.nn.Linear(2, 2).unwrap_mixed_precision()


def test_unwrap_root_policy_still_works():
    fc = pax.nn.Linear(2, 3).mixed_precision(POLICY)
    assert type(fc.unwrap_mixed_precision()).__name__ == "Linear"
