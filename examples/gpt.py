"""Train a character-level GPT on tiny shakespeare, then generate text with a KV cache.

The model: a character embedding, `--layers` pre-norm transformer blocks in one
`pax.nn.Stack` (``remat=True``: activations recomputed in the backward pass), each with causal
grouped-query attention (`--heads` query heads sharing `--kv-heads` key/value heads) and rotary
position embeddings, then an RMSNorm and a linear head. Training: AdamW with weight decay on the
weights only (a key-path mask), a warmup-cosine learning rate, gradient clipping, and the loss
and accuracy as `pax.metrics` held by the model and updated inside the jitted step.

Generation runs under one `jax.jit`: `pax.nn.init_cache` gives every attention layer a KV cache
(stacked with the layers), the prompt fills it in one call, then `jax.lax.scan` appends one
token at a time, greedily (``--temperature 0``) or sampled (temperature, ``--top-k``).

    python examples/gpt.py --steps 2000                       # ../shared/data/tinyshakespeare
    python examples/gpt.py --data input.txt --precision bfloat16 --steps 500
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/gpt.py --sharding fsdp
    python -m pax.launch -n 2 --devices-per-process 4 examples/gpt.py --steps 50
    python examples/gpt.py --resume --steps 0 --prompt "ROMEO:"  # sample from a checkpoint

Checkpoints: the directory `--checkpoint` (default ``checkpoints/gpt/``, '' for none) keeps the
model and optimizer of the last 3 saved steps (`pax.CheckpointManager`, the loss as metric),
saved at the end and every `--checkpoint-every` steps; `--resume` restores the latest step and
counts on from it (a resumed run of K steps ends at step latest + K).
"""

from __future__ import annotations

import argparse
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

import pax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _checkpoint
import _data_parallel as dp
import _plot
import _precision

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"


# --- data --------------------------------------------------------------------------------------


def load_text(path: str | None) -> str:
    """The training text (tiny shakespeare by default); a clear error when it is absent."""
    p = Path(path) if path else DEFAULT_DATA
    if not p.is_file():
        raise FileNotFoundError(
            f"--data {str(p)!r}: no such file. Fix: download tiny shakespeare (karpathy/char-rnn "
            f"data/tinyshakespeare/input.txt) to {DEFAULT_DATA}, or pass --data any_text.txt."
        )
    return p.read_text(encoding="utf-8")


class Vocab:
    """The characters of a text, sorted: ``encode(str) -> ids`` and ``decode(ids) -> str``."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"--prompt has characters not in the corpus: {unknown!r}")
        return np.array([self.index[c] for c in text], np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def batches(ids: np.ndarray, batch_size: int, seq_len: int, seed: int) -> Iterator[tuple]:
    """Random windows: ``(inputs, targets)`` of shape ``(batch_size, seq_len)``, shifted by one."""
    if len(ids) < seq_len + 2:
        raise ValueError(f"the corpus has {len(ids)} characters, fewer than --seq-len + 2")
    rng = np.random.default_rng(seed)
    window = np.arange(seq_len + 1)
    while True:
        chunk = ids[rng.integers(0, len(ids) - seq_len - 1, size=batch_size)[:, None] + window]
        yield chunk[:, :-1], chunk[:, 1:]


# --- model -------------------------------------------------------------------------------------


class Block(pax.Module):
    """Pre-norm transformer block: causal GQA attention with RoPE, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, kv_heads: int, dropout: float, *, rng_key) -> None:
        super().__init__()
        k1, k2, k3 = jax.random.split(rng_key, 3)
        self.norm1 = pax.nn.RMSNorm(dim)
        self.attn = pax.nn.MultiHeadAttention(
            dim,
            heads,
            num_kv_heads=kv_heads,
            causal=True,
            rope=True,
            with_bias=False,
            dropout_rate=dropout,
            rng_key=k1,
        )
        self.norm2 = pax.nn.RMSNorm(dim)
        self.up = pax.nn.Linear(dim, 4 * dim, rng_key=k2)
        self.down = pax.nn.Linear(4 * dim, dim, rng_key=k3)

    def __call__(self, x: jax.Array, decode: bool = False) -> jax.Array:
        x = x + self.attn(self.norm1(x), decode=decode)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class GPT(pax.Module):
    """Token ids ``(batch, time)`` -> next-token logits ``(batch, time, vocab)``."""

    def __init__(
        self,
        vocab: int,
        dim: int,
        layers: int,
        heads: int,
        kv_heads: int,
        dropout: float = 0.0,
        remat: bool = True,
    ) -> None:
        super().__init__()
        self.embed = pax.nn.Embed(vocab, dim)
        make = partial(_block, dim=dim, heads=heads, kv_heads=kv_heads, dropout=dropout)
        self.blocks = pax.nn.Stack(make, layers, remat=remat)
        self.norm = pax.nn.RMSNorm(dim)
        self.head = pax.nn.Linear(dim, vocab)
        self.train_loss = pax.metrics.Mean()
        self.train_accuracy = pax.metrics.Accuracy()

    def __call__(self, tokens: jax.Array, decode: bool = False) -> jax.Array:
        x = self.blocks(self.embed(tokens), decode=decode)
        return self.head(self.norm(x))


def _block(key, *, dim, heads, kv_heads, dropout):  # outside GPT: one function for every layer
    return Block(dim, heads, kv_heads, dropout, rng_key=key)


def loss_fn(params: GPT, model: GPT, inputs):
    model = model.update(params)
    x, y = inputs
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    model.train_loss(loss)  # metrics: states of the model, carried through the jitted step
    model.train_accuracy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, (loss, model)


# --- generation --------------------------------------------------------------------------------


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """The next token: argmax when `temperature` is 0, else sampled from the `top_k` most
    likely (0: all) at that temperature."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@partial(jax.jit, static_argnames=("length", "temperature", "top_k"))
def generate_tokens(
    model: GPT,
    prompt: jax.Array,
    key: jax.Array,
    length: int,
    temperature: float = 1.0,
    top_k: int = 0,
) -> jax.Array:
    """`length` tokens after `prompt` ``(batch, P)`` decoded with a KV cache: ``(batch, length)``.

    `temperature` 0 is greedy decoding; `top_k` 0 samples from the whole vocabulary."""
    model = pax.nn.init_cache(model.eval(), prompt.shape[0], prompt.shape[1] + length)
    logits = model(prompt, decode=True)[:, -1]  # the prompt in one call fills the cache

    def step(carry, key):
        model, logits = carry
        token = sample_logits(logits, key, temperature, top_k)
        logits = model(token[:, None], decode=True)[:, -1]
        return (model, logits), token

    _, tokens = jax.lax.scan(step, (model, logits), jax.random.split(key, length))
    return tokens.T


def generate(
    model: GPT,
    vocab: Vocab,
    prompt: str,
    length: int,
    key: jax.Array,
    temperature: float = 0.8,
    top_k: int = 0,
) -> str:
    if not prompt:
        raise ValueError('--prompt must not be empty; e.g. --prompt "ROMEO:"')
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {temperature}")
    ids = jnp.asarray(vocab.encode(prompt))[None]
    tokens = generate_tokens(model, ids, key, length, float(temperature), int(top_k))
    return prompt + vocab.decode(np.asarray(tokens[0]))


# --- training ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default=None, help=f"text file (default: {DEFAULT_DATA})")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split over devices")
    p.add_argument("--seq-len", type=int, default=128, help="characters per sequence")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks (one Stack)")
    p.add_argument("--heads", type=int, default=4, help="query heads")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (GQA)")
    p.add_argument("--dropout", type=float, default=0.0, help="attention dropout")
    p.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=100, help="warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay (weights only)")
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clipping")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and the data")
    p.add_argument("--prompt", default="ROMEO:", help="text the samples start from")
    p.add_argument("--sample-length", type=int, default=300, help="characters per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy decoding")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely (0: all)")
    _checkpoint.add_flags(p, "checkpoints/gpt/")
    p.add_argument("--plot", default=None, help="PNG of the curves (default: in --checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--sharding",
        choices=("data", "fsdp"),
        default="data",
        help="data: replicated parameters; fsdp: parameters and optimizer split",
    )
    _precision.add_flag(p)
    dp.add_process_flags(p)
    return p.parse_args(argv)


def build(
    args: argparse.Namespace, vocab_size: int, total_steps: int | None = None
) -> tuple[GPT, pax.Module]:
    """The model and its optimizer (AdamW, warmup-cosine, clipping, decay on weights only).

    The schedule spans `total_steps` (default ``--steps``): a resumed run passes the steps of
    the earlier runs plus its own, since the restored optimizer keeps counting from there.
    """
    pax.seed_rng_key(args.seed)
    model = GPT(vocab_size, args.dim, args.layers, args.heads, args.kv_heads, args.dropout)
    total = args.steps if total_steps is None else total_steps
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.learning_rate, min(args.warmup, max(total - 1, 1)), max(total, 2)
    )
    decay = pax.optim.by_key_path(r"\.weight$")  # not the biases, norms' scales, embedding
    tx = optax.chain(
        optax.clip_by_global_norm(args.clip),
        optax.adamw(schedule, weight_decay=args.weight_decay, mask=decay),
    )
    optimizer = pax.optim.from_optax(tx)(model.parameters())
    return _precision.apply(model, optimizer, args.precision)


def _count(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def run(args: argparse.Namespace, devices: Sequence[jax.Device] | None = None) -> dict:
    """Trains as `args` says; returns the model, the losses, a sample and the step times."""
    main = dp.is_main_process()
    mesh = dp.make_mesh(devices)
    dp.check_batch_size(args.batch_size, mesh)
    manager, first = _checkpoint.open_manager(args)  # first: the step training starts after
    text = load_text(args.data)
    vocab = Vocab(text)
    data = batches(vocab.encode(text), args.batch_size, args.seq_len, args.seed)
    model, optimizer = build(args, len(vocab), first + args.steps)  # the whole run's schedule
    rules = (
        pax.sharding.fsdp_rules(model, mesh)
        if args.sharding == "fsdp"
        else pax.sharding.data_parallel_rules()
    )
    placement = pax.sharding.shardings((model, optimizer), mesh, rules)
    model, optimizer = jax.device_put((model, optimizer), placement)
    saved = first if args.resume else None  # the step of the latest checkpoint
    if args.resume and manager is not None:  # the latest step
        model, optimizer = jax.device_put(manager.restore((model, optimizer)), placement)
    update = pax.utils.build_update_fn(loss_fn, jit=False)
    train_step = jax.jit(
        update,
        in_shardings=(*placement, dp.batch_sharded(mesh)),
        out_shardings=(dp.replicated(mesh), *placement),
        donate_argnums=(0, 1),
    )
    if main:
        print(
            f"gpt: {len(text):,} characters, vocabulary {len(vocab)}, {mesh.size} device(s) "
            f"({mesh.devices.flat[0].platform}), --sharding {args.sharding}, "
            f"--precision {args.precision}, {_count(model.parameters()):,} parameters",
            file=sys.stderr,
        )
    last = first + args.steps
    steps = range(first + 1, last + 1)
    bar = tqdm(steps, disable=args.no_progress or not main, unit="step") if tqdm else steps
    losses, accuracies, step_seconds = [], [], []
    for step in bar:
        start = time.perf_counter()
        loss, model, optimizer = train_step(model, optimizer, dp.shard_batch(next(data), mesh))
        losses.append(loss)
        if step % 50 == 0 or step == last:
            mean_loss = float(model.train_loss.compute())  # waits for the step
            accuracies.append(float(model.train_accuracy.compute()))
            model.train_loss.reset()
            model.train_accuracy.reset()
            if tqdm and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{accuracies[-1]:.3f}")
        if step > first + 1:
            float(loss)
            step_seconds.append(time.perf_counter() - start)
        if manager and args.checkpoint_every and step % args.checkpoint_every == 0:
            _checkpoint.save(manager, step, (model, optimizer), loss)
            saved = step
    local = dp.host_local(model, mesh)
    sample = ""
    if main:
        key = jax.random.PRNGKey(args.seed + 1)
        sample = generate(
            local, vocab, args.prompt, args.sample_length, key, args.temperature, args.top_k
        )
        print(f"--- sample (temperature {args.temperature}, top-k {args.top_k}) ---\n{sample}")
    if manager:  # every process saves (and writes its shards)
        if saved != last:
            _checkpoint.save(manager, last, (model, optimizer), losses[-1] if losses else None)
        manager.wait()
    losses = [float(x) for x in jax.device_get(losses)]
    plot = _plot.default_path(args.plot, args.checkpoint) if main else ""
    panels = [("step", "train loss", losses), ("x50 steps", "train accuracy", accuracies)]
    _plot.save_curves(plot, "gpt", panels)
    return {
        "model": model,
        "optimizer": optimizer,
        "losses": losses,
        "sample": sample,
        "vocab": vocab,
        "step_seconds": step_seconds,
        "plot": plot,
        "step": last,
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
