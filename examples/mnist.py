"""Train a ConvNet with BatchNorm on MNIST; reaches 99% test accuracy in a few epochs.

    python examples/mnist.py --data-dir DIR              # DIR holds the four MNIST IDX files
    python examples/mnist.py --data-dir DIR --use-haiku  # the same network from pax.haiku
    PAX_MNIST_DIR=DIR python examples/mnist.py --epochs 5 --batch-size 128
    python -m pax.launch -n 2 examples/mnist.py --data-dir DIR   # two processes, one run

Data: the standard IDX files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``, gzipped or not) from
``--data-dir`` (default: the ``PAX_MNIST_DIR`` environment variable); without them,
``tensorflow_datasets`` when it is installed and can load ``mnist``.

Training is data-parallel over every visible device (the batch is split along its leading axis,
the model and optimizer are replicated; see ``_data_parallel.py``); BatchNorm's statistics are
those of the whole global batch. In a multi-process run (``--coordinator``, ``--num-processes``,
``--process-id``, or ``python -m pax.launch``) every process reads the data and feeds its share
of each global batch; only process 0 prints and plots (all take part in saving). Each
epoch ends with the test accuracy of the model in ``eval()`` mode (BatchNorm then uses its
moving averages, dropout is off), counted by a `pax.metrics.Accuracy` updated in a jitted step;
the model and optimizer are saved at the end (and every ``--checkpoint-every`` steps) in the
directory ``--checkpoint`` (default ``checkpoints/mnist/``, '' for none), a
`pax.CheckpointManager` keeping the last 3 steps with the loss as metric; ``--resume`` restores
the latest step and trains ``--epochs`` more epochs, counting the steps on from it.
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import numpy as np
import optax
from tqdm import tqdm

import pax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _checkpoint
import _data_parallel as dp
import _plot
import _precision

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
HOW_TO_GET = (
    "MNIST not found. Download the four IDX files into a folder and pass it with --data-dir (or "
    "set PAX_MNIST_DIR):\n"
    "    mkdir -p mnist && for f in "
    + " ".join(f"{name}.gz" for name in FILES.values())
    + f"; do curl -fsSL -o mnist/$f {MIRROR}$f; done\n"
    "    python examples/mnist.py --data-dir mnist\n"
    "or `pip install tensorflow-datasets` and run without --data-dir."
)

# IDX element types: https://yann.lecun.com/exdb/mnist/ (big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --- data --------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzipped when its name ends in ``.gz``) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()}).")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, np.dtype(_IDX_DTYPES[data[2]]), offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but the file holds {array.size} items.")
    return array.reshape(dims)


def _find(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.is_file():
            return candidate
    return None


def _from_idx(data_dir: Path) -> dict[str, np.ndarray]:
    paths = {key: _find(data_dir, name) for key, name in FILES.items()}
    missing = [FILES[key] + "[.gz]" for key, p in paths.items() if p is None]
    if missing:
        missing = ", ".join(missing)
        raise FileNotFoundError(f"--data-dir {data_dir}: missing {missing}.\n{HOW_TO_GET}")
    return {key: read_idx(p) for key, p in paths.items()}


def _from_tfds() -> dict[str, np.ndarray] | None:
    """MNIST through ``tfds.data_source`` (random access, no TensorFlow needed)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    out = {}
    try:
        for split in ("train", "test"):
            source = tfds.data_source("mnist", split=split)
            examples = [source[i] for i in range(len(source))]
            out[f"{split}_images"] = np.stack([np.asarray(e["image"])[..., 0] for e in examples])
            out[f"{split}_labels"] = np.asarray([e["label"] for e in examples])
    except Exception as err:  # no network, no prepared copy, ...
        print(f"tensorflow_datasets could not load mnist: {err}", file=sys.stderr)
        return None
    return out


def load_mnist(data_dir: str | None) -> dict[str, np.ndarray]:
    """Returns train/test images as float32 ``[N, 28, 28, 1]`` in [0, 1] and int32 labels."""
    data_dir = data_dir or os.environ.get("PAX_MNIST_DIR")
    if data_dir:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {data_dir}: no such folder.\n{HOW_TO_GET}")
        raw = _from_idx(Path(data_dir))
    else:
        raw = _from_tfds()
        if raw is None:
            raise FileNotFoundError(HOW_TO_GET)
    out = {}
    for split in ("train", "test"):
        images = np.asarray(raw[f"{split}_images"], np.float32).reshape(-1, 28, 28, 1) / 255.0
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = np.asarray(raw[f"{split}_labels"], np.int32)
    return out


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Moves each image by up to `max_shift` pixels in each direction (zeros fill the gap)."""
    if max_shift == 0:
        return images
    n, h, w, _ = images.shape
    m = max_shift
    padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)))
    rows = rng.integers(0, 2 * m + 1, n)[:, None] + np.arange(h)
    cols = rng.integers(0, 2 * m + 1, n)[:, None] + np.arange(w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def train_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    max_shift: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled (and randomly shifted) batches; the last incomplete one is
    dropped."""
    order = rng.permutation(len(images))
    for i in range(len(images) // batch_size):
        idx = np.sort(order[i * batch_size : (i + 1) * batch_size])
        yield random_shift(images[idx], max_shift, rng), labels[idx]


# --- model -------------------------------------------------------------------------------------


def flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def conv_net(
    use_haiku: bool = False, width: int = 32, hidden: int = 128, dropout: float = 0.0
) -> pax.nn.Sequential:
    """Three conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool; `width`, 2 x `width` and
    4 x `width` channels; 28 -> 14 -> 7 -> 3 pixels), then a hidden layer, dropout and a 10-way
    head. Built from `pax.nn` layers, or from the `pax.haiku` wrappers of Haiku's (Haiku has no
    dropout module, so both use `pax.nn.Dropout`).

    The convolutions have no bias: the BatchNorm after each one subtracts the batch mean, so a
    bias would get a zero gradient (and Adam would turn its rounding noise into updates).
    """
    if use_haiku:
        hk = pax.haiku
        conv = lambda cin, cout: hk.conv_2d(cin, cout, 3, padding="SAME", with_bias=False)
        norm = lambda c: hk.batch_norm_2d(c, decay=0.9)  # pax.nn.BatchNorm's (and Haiku's)
        pool = lambda: hk.max_pool(window_shape=2, stride=2, padding="VALID")
        linear = hk.linear
    else:
        nn = pax.nn
        conv = lambda cin, cout: nn.Conv2D(cin, cout, 3, padding="SAME", with_bias=False)
        norm = lambda c: nn.BatchNorm2D(c)
        pool = lambda: nn.MaxPool(window_shape=2, stride=2, padding="VALID")
        linear = nn.Linear
    layers, channels = [], 1
    # a pax.nn layer can leave its input size as None (pax.haiku's take it now)
    flat = 3 * 3 * 4 * width if use_haiku else None
    for out in (width, 2 * width, 4 * width):
        layers += [conv(channels, out), norm(out), jax.nn.relu, pool()]
        channels = out
    model = pax.nn.Sequential(
        *layers,
        flatten,
        linear(flat, hidden),
        jax.nn.relu,
        pax.nn.Dropout(dropout),  # identity in eval() mode
        linear(hidden, 10),
    )
    # sizes the lazy layers from an example input (abstractly: nothing is computed)
    return model.lazy_init(np.zeros((1, 28, 28, 1), np.float32))


def loss_fn(params, model, inputs):
    model = model.update(params)
    images, labels = inputs
    logits = model(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (loss, model)


def eval_step(model, accuracy: pax.metrics.Accuracy, inputs):
    """Folds one test batch into `accuracy` (a `pax.metrics.Accuracy`) and returns it."""
    images, labels, mask = inputs
    accuracy(model(images), labels, mask=mask)
    return accuracy


def evaluate(model, images: np.ndarray, labels: np.ndarray, mesh, eval_fn, batch_size: int):
    """Test accuracy of `model` (use ``model.eval()``). The last batch is padded to
    `batch_size` and the padding is masked out; the device is read once, at the end."""
    accuracy = dp.replicate(pax.metrics.Accuracy(), mesh)
    for i in range(0, len(images), batch_size):
        x, y = images[i : i + batch_size], labels[i : i + batch_size]
        mask = np.arange(batch_size) < len(x)
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad,), y.dtype)])
        accuracy = eval_fn(model, accuracy, dp.shard_batch((x, y, mask), mesh))
    return float(accuracy.compute())


# --- training ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split over devices")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam, cosine decay")
    p.add_argument("--seed", type=int, default=42, help="seed of the model and the data order")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv layer")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the last layer")
    p.add_argument("--shift", type=int, default=2, help="augmentation: random shifts, in pixels")
    p.add_argument("--use-haiku", action="store_true", help="build the model from pax.haiku")
    _checkpoint.add_flags(p, "checkpoints/mnist/")
    p.add_argument(
        "--plot", default=None, help="PNG of the curves (default: in --checkpoint; '' none)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _precision.add_flag(p)
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch early (smoke tests)")
    dp.add_process_flags(p)
    return p.parse_args(argv)


def run(
    args: argparse.Namespace,
    devices: Sequence[jax.Device] | None = None,
    data: dict[str, np.ndarray] | None = None,
) -> dict:
    """Trains as `args` says; returns the model, the per-epoch test accuracies and seconds.

    In a multi-process run (`dp.initialize` first) every process calls it; only process 0
    prints and plots, and every process takes part in `pax.save`.
    """
    main_process = dp.is_main_process()
    mesh = dp.make_mesh(devices)
    dp.check_batch_size(args.batch_size, mesh)
    manager, first = _checkpoint.open_manager(args)  # first: the step training starts after
    data = load_mnist(args.data_dir) if data is None else data
    steps_per_epoch = len(data["train_images"]) // args.batch_size
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch-size {args.batch_size} is larger than the training set "
            f"({len(data['train_images'])} images). Fix: a smaller --batch-size."
        )

    pax.seed_rng_key(args.seed)
    model = conv_net(use_haiku=args.use_haiku, width=args.width, dropout=args.dropout)
    # the whole run's schedule: a resumed run's optimizer keeps counting after `first` steps
    schedule = optax.cosine_decay_schedule(
        args.learning_rate, first + args.epochs * steps_per_epoch
    )
    optimizer = pax.optim.from_optax(optax.adam(schedule))(model.parameters())
    model, optimizer = _precision.apply(model, optimizer, args.precision)
    model, optimizer = dp.replicate((model, optimizer), mesh)
    saved = first if args.resume else None  # the step of the latest checkpoint
    if args.resume and manager is not None:  # the latest step
        model, optimizer = dp.replicate(manager.restore((model, optimizer)), mesh)

    update_fn = dp.jit_step(pax.utils.build_update_fn(loss_fn, jit=False), mesh, n_replicated=2)
    eval_fn = dp.jit_step(eval_step, mesh, n_replicated=2)
    eval_batch = -(-1000 // mesh.size) * mesh.size
    rng = np.random.default_rng(args.seed)

    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    if main_process:
        print(
            f"mnist: {len(data['train_images'])} train / {len(data['test_images'])} test images, "
            f"{mesh.size} device(s) ({mesh.devices.flat[0].platform}{processes}), "
            f"{'pax.haiku' if args.use_haiku else 'pax.nn'} model",
            file=sys.stderr,
        )
    accuracies, epoch_seconds, losses = [], [], []
    global_step = first
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        bar = tqdm(
            train_batches(
                data["train_images"], data["train_labels"], args.batch_size, rng, args.shift
            ),
            total=steps_per_epoch,
            desc=f"epoch {epoch}",
            unit="step",
            disable=args.no_progress or not main_process,
        )
        last_time, last_step = start, 0
        for step, batch in enumerate(bar, 1):
            loss, model, optimizer = update_fn(model, optimizer, dp.shard_batch(batch, mesh))
            losses.append(loss)  # read back once, at the end
            global_step += 1
            if manager and args.checkpoint_every and global_step % args.checkpoint_every == 0:
                _checkpoint.save(manager, global_step, (model, optimizer), loss)
                saved = global_step
            if step == 1:  # the first step may have compiled the update
                float(loss)
                last_time, last_step = time.perf_counter(), 1
            elif step % 20 == 0 or step == steps_per_epoch:
                loss_value = float(loss)  # waits for the step to finish
                now = time.perf_counter()
                rate = (step - last_step) * args.batch_size / (now - last_time)
                last_time, last_step = now, step
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:,.0f}")
            if step == steps_per_epoch:
                break
        bar.close()
        seconds = time.perf_counter() - start
        accuracy = evaluate(
            model.eval(), data["test_images"], data["test_labels"], mesh, eval_fn, eval_batch
        )
        accuracies.append(accuracy)
        epoch_seconds.append(seconds)
        if main_process:
            print(
                f"epoch {epoch}: test accuracy {accuracy:.2%}, train time {seconds:.1f}s",
                file=sys.stderr,
            )
    if manager:
        # every process saves: with several processes each writes the shards it owns
        if saved != global_step:
            loss = losses[-1] if losses else None
            _checkpoint.save(manager, global_step, (model, optimizer), loss)
        manager.wait()
        if main_process:
            print(f"checkpoint of step {global_step} in {args.checkpoint}", file=sys.stderr)
    losses = [float(x) for x in jax.device_get(losses)]
    plot = _plot.default_path(args.plot, args.checkpoint) if main_process else ""
    _plot.save_curves(
        plot, "MNIST", [("step", "train loss", losses), ("epoch", "test accuracy", accuracies)]
    )
    return {
        "model": model,
        "optimizer": optimizer,
        "accuracies": accuracies,
        "epoch_seconds": epoch_seconds,
        "losses": losses,
        "plot": plot,
        "step": global_step,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        dp.initialize(args)
        run(args)
    except (FileNotFoundError, FileExistsError) as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
