"""Train an LSTM language model on a text file, data-parallel over every visible device.

The model reads bytes (UTF-8), so any text file works and nothing needs a vocabulary file: an
embedding, an LSTM unrolled over time with `pax.dynamic_unroll`, and a linear head predicting the
next byte.

Data parallelism: a `jax.sharding.Mesh` spans the devices; each global batch is split along its
leading axis, the model and the optimizer are replicated, and one jitted step updates them (the
compiler adds the cross-device gradient sum). ``--sharding fsdp`` splits the parameters and the
Adam moments over the same devices (`pax.sharding.fsdp_rules`); ``--sharding tensor`` uses a 2-D
mesh ``("data", "model")`` and splits the layers' output features over "model"
(`TENSOR_PARALLEL_RULES`). The same command runs on one CPU, on 8 simulated CPU devices, on a
GPU, on a TPU pod slice, or as several processes (each feeds its share of the global batch; only
process 0 prints and samples; every process writes its part of each checkpoint):

    python examples/char_rnn.py --steps 200 --batch-size 32            # the source of pax itself
    python examples/char_rnn.py --data input.txt --steps 5000          # any text file
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/char_rnn.py --steps 50
    python -m pax.launch -n 2 --devices-per-process 4 examples/char_rnn.py --steps 50

The progress bar shows the mean loss since its last update, a `pax.metrics.Mean` updated inside
the jitted step. Every `--sample-every` steps (and at the end) it prints text sampled from
`--prompt`. At the end (and every `--checkpoint-every` steps) it saves the model and optimizer
in the directory `--checkpoint` (a `pax.CheckpointManager` keeping the last 3 steps); `--resume`
restores the latest step and counts on from it:

    python examples/char_rnn.py --steps 200 --checkpoint-every 100   # checkpoints/char_rnn/
    python examples/char_rnn.py --steps 100 --resume                 # steps 201..300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import pax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _checkpoint
import _data_parallel as dp
import _plot
import _precision

VOCAB_SIZE = 256  # bytes
SHARDINGS = ("data", "fsdp", "tensor")

# --sharding tensor: each layer's output features split over the "model" axis (the LSTM's four
# gates side by side, the head's vocabulary); the compiler gathers what the next layer needs.
# A from_optax optimizer's moments follow their parameters' key paths, so they are split alike.
TENSOR_PARALLEL_RULES = [
    (r"\.embed\.weight$", P(None, "model")),
    (r"\.lstm\.weight_(ih|hh)$", P(None, "model")),
    (r"\.lstm\.bias$", P("model")),
    (r"\.head\.weight$", P(None, "model")),
    (r"\.head\.bias$", P("model")),
    (r".*", P()),
]


# --- data --------------------------------------------------------------------------------------


def default_corpus() -> bytes:
    """The Python source of the installed pax package: a corpus that needs no download."""
    root = Path(pax.__file__).parent
    files = sorted(root.rglob("*.py"))
    return b"\n\n".join(f.read_bytes() for f in files)


def load_corpus(path: str | None) -> np.ndarray:
    """Returns the corpus as a uint8 array of bytes (the file at `path`, or `default_corpus`)."""
    if path is None:
        data = default_corpus()
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"--data {path!r}: no such file. Pass a text file, e.g. --data input.txt, or "
                f"leave --data out to train on the source code of pax itself."
            )
        data = p.read_bytes()
    return np.frombuffer(data, dtype=np.uint8)


def batches(
    corpus: np.ndarray, batch_size: int, seq_len: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(inputs, targets)``: `batch_size` random windows of `seq_len` bytes each, the
    targets shifted by one byte."""
    if len(corpus) < seq_len + 2:
        raise ValueError(
            f"the corpus has {len(corpus)} bytes, fewer than --seq-len {seq_len} + 2. Fix: use a "
            f"larger file or a smaller --seq-len, e.g. --seq-len {max(1, len(corpus) // 2)}."
        )
    rng = np.random.default_rng(seed)
    window = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(0, len(corpus) - seq_len - 1, size=batch_size)
        chunk = corpus[starts[:, None] + window].astype(np.int32)
        yield chunk[:, :-1], chunk[:, 1:]


# --- model -------------------------------------------------------------------------------------

PRECISION_LAYERS = r"^\.(embed|lstm|head)$"  # the layers a --precision policy is given to


class LanguageModel(pax.Module):
    """Embedding -> LSTM -> linear head, over byte ids of shape ``[batch, time]``.

    With ``use_haiku`` the three layers are Haiku's (``pax.haiku.embed``, ``lstm``, ``linear``)
    instead of the native `pax.nn` ones; the rest of the program is the same.
    """

    def __init__(
        self, vocab_size: int, embed_dim: int, hidden_dim: int, use_haiku: bool = False
    ) -> None:
        super().__init__()
        if use_haiku:
            self.embed = pax.haiku.embed(vocab_size, embed_dim)
            self.lstm = pax.haiku.lstm(hidden_dim, in_dim=embed_dim)
            self.head = pax.haiku.linear(hidden_dim, vocab_size)
        else:
            self.embed = pax.nn.Embed(vocab_size, embed_dim)
            self.lstm = pax.nn.LSTM(embed_dim, hidden_dim)
            self.head = pax.nn.Linear(hidden_dim, vocab_size)

    def unroll(self, tokens: jax.Array, state):
        """Runs over ``tokens[batch, time]`` from `state`; returns (logits, final state)."""
        x = self.embed(tokens)
        hs, state = pax.dynamic_unroll(self.lstm, x, state, time_major=False)
        return self.head(hs), state

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.unroll(tokens, self.lstm.initial_state(tokens.shape[0]))[0]


def cross_entropy(model: LanguageModel, inputs, state) -> jax.Array:
    """The mean next-byte cross-entropy of `model` over ``inputs = (x, y)``, from `state`."""
    x, y = inputs
    logits, _ = model.unroll(x, state)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def loss_fn(params: LanguageModel, model: LanguageModel, inputs):
    model = model.update(params)
    loss = cross_entropy(model, inputs, model.lstm.initial_state(inputs[0].shape[0]))
    return loss, (loss, model)


def per_device_loss_fn(params: LanguageModel, model: LanguageModel, inputs):
    """`loss_fn` on one device's rows of the batch, inside `jax.shard_map` (``--sharding data``).

    The replicated parameters are cast to per-device ("varying") values once, before the
    model runs: the gradient's sum over the devices is then a single all-reduce at that cast,
    after the backward pass. Without it (a plain `jax.jit` of the global step) the compiler
    puts the all-reduce of the LSTM's weight gradients inside the backward time loop: one
    cross-device reduction per time step, cheap within one process, slow across processes.
    The loss is the mean over the devices, so the update is the same as on one device.
    """
    vary = lambda tree: jax.lax.pcast(tree, dp.DATA_AXIS, to="varying")
    local = model.update(vary(params))
    state = vary(local.lstm.initial_state(inputs[0].shape[0]))  # the scan's carry varies too
    loss = jax.lax.pmean(cross_entropy(local, inputs, state), dp.DATA_AXIS)
    # the replicated parameters go on to the optimizer (the model has no array states)
    return loss, (loss, local.update(params))


def make_train_step(update_fn):
    """``step(model, optimizer, running_loss, batch) -> (loss, model, optimizer, running_loss)``:
    one `update_fn` step that also folds its loss into `running_loss` (a `pax.metrics.Mean`)."""

    def train_step(model, optimizer, running_loss: pax.metrics.Mean, batch):
        loss, model, optimizer = update_fn(model, optimizer, batch)
        running_loss(loss)
        return loss, model, optimizer, running_loss

    return train_step


@partial(jax.jit, static_argnames=("length",))
def _generate(model: LanguageModel, prompt: jax.Array, key: jax.Array, temperature, length: int):
    logits, state = model.unroll(prompt[None], model.lstm.initial_state(1))
    logits = logits[:, -1]

    def step(carry, key):
        state, logits = carry
        token = jax.random.categorical(key, logits / temperature, axis=-1)
        logits, state = model.unroll(token[:, None], state)
        return (state, logits[:, -1]), token[0]

    _, tokens = jax.lax.scan(step, (state, logits), jax.random.split(key, length))
    return tokens


def generate(
    model: LanguageModel, prompt: str, length: int, key: jax.Array, temperature: float = 0.8
) -> str:
    """Returns `prompt` followed by `length` sampled bytes (decoded as UTF-8)."""
    prompt_ids = np.frombuffer(prompt.encode("utf-8"), dtype=np.uint8).astype(np.int32)
    if len(prompt_ids) == 0:
        raise ValueError('--prompt must not be empty; e.g. --prompt "import jax"')
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}; e.g. --temperature 0.8")
    tokens = _generate(model.eval(), jnp.asarray(prompt_ids), key, temperature, length)
    out = bytes(np.asarray(tokens).astype(np.uint8).tolist())
    return prompt + out.decode("utf-8", errors="replace")


# --- training ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default=None, help="text file (default: pax's own source code)")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split over devices")
    p.add_argument("--seq-len", type=int, default=64, help="bytes per training sequence")
    p.add_argument("--embed-dim", type=int, default=64, help="size of the byte embedding")
    p.add_argument("--hidden-dim", type=int, default=256, help="size of the LSTM state")
    p.add_argument("--learning-rate", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=42, help="seed of the model and the data")
    p.add_argument("--prompt", default="import ", help="text the samples start from")
    p.add_argument("--sample-every", type=int, default=500, help="0: sample only at the end")
    p.add_argument("--sample-length", type=int, default=300, help="bytes per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--use-haiku", action="store_true", help="build the model from pax.haiku")
    _checkpoint.add_flags(p, "checkpoints/char_rnn/")
    p.add_argument(
        "--plot", default=None, help="PNG of the loss (default: in --checkpoint; '' none)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--sharding",
        choices=SHARDINGS,
        default="data",
        help="data: replicated parameters; fsdp: parameters and optimizer split over the "
        "devices; tensor: layers split over the 'model' axis of a (data, model) mesh",
    )
    p.add_argument(
        "--model-parallel", type=int, default=2, help="size of the 'model' axis (tensor only)"
    )
    p.add_argument(
        "--metrics",
        default="",
        help="JSON file for the per-step losses and seconds (process 0; each step is then "
        "waited for, to time it)",
    )
    _precision.add_flag(p)
    dp.add_process_flags(p)
    return p.parse_args(argv)


def sharding_rules(args: argparse.Namespace, model: LanguageModel, mesh) -> list:
    """The `pax.sharding` rules of ``--sharding`` for `model` (and its optimizer)."""
    if args.sharding == "fsdp":
        return pax.sharding.fsdp_rules(model, mesh)
    if args.sharding == "tensor":
        return TENSOR_PARALLEL_RULES
    return pax.sharding.data_parallel_rules()


def run(args: argparse.Namespace, devices: Sequence[jax.Device] | None = None) -> dict:
    """Trains as `args` says on `devices` (default: all); returns the model and the losses.

    In a multi-process run (`dp.initialize` first) every process calls it; only process 0
    prints, samples and plots, every process takes part in `pax.save`, and every process
    returns the same losses.
    """
    main_process = dp.is_main_process()
    if args.sharding == "tensor" and args.use_haiku:
        raise ValueError(
            "--sharding tensor splits the pax.nn layers by their names (.lstm.weight_ih, ...), "
            "which the pax.haiku layers do not have. Fix: leave out --use-haiku, or use "
            "--sharding fsdp."
        )
    mesh = dp.make_mesh(devices, args.model_parallel if args.sharding == "tensor" else None)
    dp.check_batch_size(args.batch_size, mesh)
    manager, first = _checkpoint.open_manager(args)  # first: the step training starts after
    corpus = load_corpus(args.data)
    data = batches(corpus, args.batch_size, args.seq_len, args.seed)

    pax.seed_rng_key(args.seed)
    model = LanguageModel(VOCAB_SIZE, args.embed_dim, args.hidden_dim, args.use_haiku)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.learning_rate))
    optimizer = pax.optim.from_optax(tx)(model.parameters())
    # the layers compute under the policy (the model's own `unroll` is not a __call__)
    model, optimizer = _precision.apply(model, optimizer, args.precision, PRECISION_LAYERS)
    # the mean loss since the last progress report, accumulated on the device
    running_loss = dp.replicate(pax.metrics.Mean(), mesh)
    placement = pax.sharding.shardings((model, optimizer), mesh, sharding_rules(args, model, mesh))
    model, optimizer = jax.device_put((model, optimizer), placement)
    saved = first if args.resume else None  # the step of the latest checkpoint
    if args.resume and manager is not None:  # read into the placed arrays: each process reads
        state = manager.restore((model, optimizer))  # only its devices' slices, latest step
        model, optimizer = jax.device_put(state, placement)
    rep, data_split = dp.replicated(mesh), dp.batch_sharded(mesh)
    if args.sharding == "data":  # each device runs the step on its rows; one gradient sum
        update = pax.utils.build_update_fn(per_device_loss_fn, jit=False)
        step = jax.shard_map(
            make_train_step(update),
            mesh=mesh,
            in_specs=(P(), P(), P(), P(dp.DATA_AXIS)),
            out_specs=P(),
        )
    else:  # the compiler partitions the global step as the parameters' placement says
        step = make_train_step(pax.utils.build_update_fn(loss_fn, jit=False))
    train_step = jax.jit(
        step,
        in_shardings=(*placement, rep, data_split),
        out_shardings=(rep, *placement, rep),
    )

    processes = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    if main_process:
        print(
            f"char_rnn: {len(corpus):,} bytes of text, {mesh.size} device(s) "
            f"({mesh.devices.flat[0].platform}{processes}), mesh {dict(mesh.shape)}, "
            f"--sharding {args.sharding}, global batch {args.batch_size} x {args.seq_len}",
            file=sys.stderr,
        )
    sample_key = jax.random.PRNGKey(args.seed + 1)
    losses = []
    tokens_per_step = args.batch_size * args.seq_len
    last = first + args.steps
    bar = tqdm(
        range(first + 1, last + 1),
        disable=args.no_progress or not main_process,
        desc="train",
        unit="step",
    )
    last_time, last_step = time.perf_counter(), 0
    step_seconds = []
    for step in bar:
        start = time.perf_counter()
        batch = dp.shard_batch(next(data), mesh)
        loss, model, optimizer, running_loss = train_step(model, optimizer, running_loss, batch)
        losses.append(loss)
        if args.metrics:
            float(loss)  # wait for the step, to time it
            step_seconds.append(time.perf_counter() - start)
        if step == first + 1:  # the first step compiled the update; measure throughput from here
            float(loss)
            last_time, last_step = time.perf_counter(), step
        elif step % 20 == 0 or step == last:
            loss_value = float(running_loss.compute())  # waits for the step to finish
            running_loss = running_loss.reset()
            now = time.perf_counter()
            rate = (step - last_step) * tokens_per_step / (now - last_time)
            last_time, last_step = now, step
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}")
        if (args.sample_every and step % args.sample_every == 0) or step == last:
            local_model = dp.host_local(model, mesh)  # every process: gathers split parameters
            if main_process:
                sample_key, key = jax.random.split(sample_key)
                text = generate(local_model, args.prompt, args.sample_length, key, args.temperature)
                tqdm.write(f"--- sample at step {step} (loss {float(loss):.3f}) ---\n{text}\n---")
            last_time = time.perf_counter()  # leave sampling out of the throughput
        if manager and args.checkpoint_every and step % args.checkpoint_every == 0:
            _checkpoint.save(manager, step, (model, optimizer), loss)
            saved = step
    if manager:
        # every process saves: with several processes each writes the shards it owns
        if saved != last:
            _checkpoint.save(manager, last, (model, optimizer), losses[-1] if losses else None)
        manager.wait()
        if main_process:
            print(f"checkpoint of step {last} in {args.checkpoint}", file=sys.stderr)
    losses = [float(x) for x in jax.device_get(losses)]
    plot = _plot.default_path(args.plot, args.checkpoint) if main_process else ""
    _plot.save_curves(plot, "char_rnn", [("step", "train loss", losses)])
    if args.metrics and main_process:
        with open(args.metrics, "w") as f:
            json.dump({"losses": losses, "step_seconds": step_seconds}, f)
    return {"model": model, "optimizer": optimizer, "losses": losses, "plot": plot, "step": last}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        dp.initialize(args)
        run(args)
    except (FileNotFoundError, FileExistsError) as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
