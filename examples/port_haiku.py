"""Port a trained Haiku model to native pax layers, fine-tune its head, save a pax checkpoint.

The steps a Haiku user takes, end to end and offline (random data, a few seconds):

1. A Haiku ConvNet (``hk.Conv2D``, ``hk.BatchNorm``, ``hk.nets.MLP``) built with
   ``hk.transform_with_state`` is initialized and its weights saved as Haiku users save them:
   an ``.npz`` of the flat ``{"module/name": array}`` dicts (no pickle).
2. The equivalent native pax model (``pax.nn.Conv2D``, ``pax.nn.BatchNorm2D``,
   ``pax.nn.MLP``) loads them with ``pax.haiku.load_haiku_params`` and gives the Haiku
   program's outputs, in training and in evaluation mode.
3. The backbone is frozen (``model.freeze(where=...)``) and the head fine-tuned a few steps.
4. The model is saved with ``pax.save`` (and exported back to Haiku's dicts).
5. A Haiku ``hk.nets.ResNet18`` goes to the native ``pax.nets.ResNet18`` with no glue code
   (same Haiku names: ``load_haiku_params`` with no ``names=`` or ``prefix=``), is fine-tuned
   a few steps and exported back to Haiku's dicts, which Haiku's own ``apply`` runs.

Run: ``python examples/port_haiku.py --out /tmp/port_haiku``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

import pax

NUM_CLASSES = 3


def haiku_forward(x: jax.Array, is_training: bool) -> jax.Array:
    """The Haiku program being ported."""
    x = hk.Conv2D(8, 3, stride=2)(x)
    x = jax.nn.relu(hk.BatchNorm(True, True, 0.9)(x, is_training))
    x = hk.Conv2D(8, 3, stride=2)(x)
    x = jax.nn.relu(hk.BatchNorm(True, True, 0.9)(x, is_training))
    x = hk.Flatten()(x)
    return hk.nets.MLP([32, NUM_CLASSES])(x)


def pax_model(image_size: int) -> pax.nn.Sequential:
    """The same network from native pax layers, created in the program's order."""
    side = image_size // 4
    return pax.nn.Sequential(
        pax.nn.Conv2D(1, 8, 3, stride=2),
        pax.nn.BatchNorm2D(8, decay=0.9),
        jax.nn.relu,
        pax.nn.Conv2D(8, 8, 3, stride=2),
        pax.nn.BatchNorm2D(8, decay=0.9),
        jax.nn.relu,
        pax.nn.Flatten(),
        pax.nn.MLP(output_sizes=[32, NUM_CLASSES], in_dim=side * side * 8),
    )


def save_haiku_npz(path: str, params: dict, state: dict) -> None:
    """How a Haiku user saves weights: flat ``"module/name"`` keys, one file per dict."""
    flat = {f"{m}/{n}": np.asarray(v) for m, leaves in params.items() for n, v in leaves.items()}
    np.savez(path + ".params.npz", **flat)
    flat = {f"{m}/{n}": np.asarray(v) for m, leaves in state.items() for n, v in leaves.items()}
    np.savez(path + ".state.npz", **flat)


def loss_fn(params, model, inputs):
    model = model.update(params)
    x, labels = inputs
    logits = model(x)
    loss = -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, NUM_CLASSES), -1))
    return loss, (loss, model)


def run(args: argparse.Namespace) -> dict:
    """Runs the port; returns the figures it checked (used by the test)."""
    os.makedirs(args.out, exist_ok=True)
    key = jax.random.PRNGKey(args.seed)
    x = jax.random.normal(key, (args.batch_size, args.image_size, args.image_size, 1))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (args.batch_size,), 0, NUM_CLASSES)

    # 1. the Haiku side: init (and one training call, so the moving averages moved), save
    f = hk.transform_with_state(haiku_forward)
    params, state = f.init(jax.random.fold_in(key, 2), x, True)
    _, state = f.apply(params, state, None, x, True)
    stem = os.path.join(args.out, "haiku_convnet")
    save_haiku_npz(stem, params, state)

    # 2. load into native pax layers and check outputs against the Haiku program
    model = pax_model(args.image_size)
    with np.load(stem + ".params.npz") as p, np.load(stem + ".state.npz") as s:
        model = pax.haiku.load_haiku_params(model, dict(p), dict(s))  # flat dicts accepted
    print("Haiku names:", pax.haiku.haiku_module_names(model))
    want_eval, _ = f.apply(params, state, None, x, False)
    eval_diff = float(jnp.max(jnp.abs(model.eval()(x) - want_eval)))
    want_train, _ = f.apply(params, state, None, x, True)
    train_diff = float(jnp.max(jnp.abs(model.copy()(x) - want_train)))
    print(f"max |pax - haiku|: eval {eval_diff:.2e}, train {train_diff:.2e}")
    if max(eval_diff, train_diff) > 1e-4:
        raise SystemExit(f"the ported model differs from the Haiku program by {eval_diff}")

    # 3. fine-tune the head only: freeze everything before the MLP (modules 0-6)
    model = model.freeze(where=r"^\.modules\[[0-6]\]\.")
    optimizer = pax.optim.adam(model.parameters(), args.learning_rate)
    update_fn = pax.utils.build_update_fn(loss_fn)
    backbone = jax.tree_util.tree_leaves(model.modules[0])
    losses = []
    for _ in range(args.steps):
        loss, model, optimizer = update_fn(model, optimizer, (x, labels))
        losses.append(float(loss))
    print("fine-tuning losses:", " ".join(f"{v:.4f}" for v in losses))
    for before, after in zip(backbone, jax.tree_util.tree_leaves(model.modules[0])):
        np.testing.assert_array_equal(before, after)  # the frozen backbone did not move

    # 4. save a pax checkpoint, and the fine-tuned weights in Haiku's form
    model = model.unfreeze()
    path = os.path.join(args.out, "port_haiku.npz")
    pax.save(path, model)
    restored = pax.load(path, pax_model(args.image_size))
    new_params, new_state = pax.haiku.to_haiku_params(restored)
    out, _ = f.apply(new_params, new_state, None, x, False)
    np.testing.assert_allclose(out, restored.eval()(x), rtol=1e-4, atol=1e-5)
    print(f"saved {path}")
    result = {"eval_diff": eval_diff, "train_diff": train_diff, "losses": losses}
    result["checkpoint"] = path
    if args.resnet_steps > 0:
        x3 = jnp.concatenate([x, x * 0.5, -x], axis=-1)  # an RGB-like batch
        result.update(port_resnet18(args, x3, labels))
    return result


def port_resnet18(args: argparse.Namespace, x: jax.Array, labels: jax.Array) -> dict:
    """Step 5: Haiku's ResNet18 -> `pax.nets.ResNet18` -> fine-tuned -> Haiku's dicts."""

    def forward(x: jax.Array, is_training: bool) -> jax.Array:
        return hk.nets.ResNet18(NUM_CLASSES)(x, is_training)

    f = hk.transform_with_state(forward)
    params, state = f.init(jax.random.PRNGKey(args.seed), x, True)
    net = pax.nets.ResNet18(NUM_CLASSES, in_dim=x.shape[-1])
    net = pax.haiku.load_haiku_params(net, params, state)  # the whole port: one call
    want, _ = f.apply(params, state, None, x, False)
    diff = float(jnp.max(jnp.abs(net.eval()(x) - want)))
    print(f"ResNet18 max |pax - haiku| (eval): {diff:.2e}")
    optimizer = pax.optim.adamw(net.parameters(), args.learning_rate, weight_decay=1e-4)
    update_fn = pax.utils.build_update_fn(loss_fn)
    losses = []
    for _ in range(args.resnet_steps):
        loss, net, optimizer = update_fn(net, optimizer, (x, labels))
        losses.append(float(loss))
    print("ResNet18 fine-tuning losses:", " ".join(f"{v:.4f}" for v in losses))
    new_params, new_state = pax.haiku.to_haiku_params(net)  # back to Haiku, same names
    out, _ = f.apply(new_params, new_state, None, x, False)
    export_diff = float(jnp.max(jnp.abs(out - net.eval()(x))))
    print(f"ResNet18 exported back to Haiku: max |haiku - pax| {export_diff:.2e}")
    return {"resnet_diff": diff, "resnet_losses": losses, "resnet_export_diff": export_diff}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="checkpoints/port_haiku", help="folder for the files")
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resnet-steps", type=int, default=3, help="ResNet18 steps (0: skip it)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
