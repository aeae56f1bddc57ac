"""Decoding and training numbers of examples/gpt.py (a benchmark script, not a test).

1. Decode speed at `--new-tokens` generated tokens: `gpt.generate_tokens` (KV cache, one jitted
   scan) against recomputing the whole prefix for every token (the same model over a fixed
   buffer of prompt + new tokens, one jitted scan, so nothing recompiles), tokens/s, median of
   `--runs`, in one process. Both give the same greedy tokens (checked).
2. The training loss of examples/gpt.py after `--train-steps` steps on tiny shakespeare, and a
   sample of its text.
3. Its step time against the same model and update written with plain `jax.lax.scan` and
   `jax.checkpoint` (parameters taken from the pax model, loss checked equal), median of
   `--runs` rounds of `--round-steps` steps, interleaved.

    python scripts/bench_decode.py            # about a minute on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import gpt  # noqa: E402


def timed(fn, runs: int) -> float:
    """Median seconds of `fn()` (its result waited for) over `runs`, after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@jax.jit
def recompute_tokens(model, prompt, buffer):
    """Greedy tokens by running the whole (causal) model over the prefix for every new token."""
    p, total = prompt.shape[1], buffer.shape[1]
    buffer = buffer.at[:, :p].set(prompt)

    def step(buffer, t):
        logits = model(buffer)  # causal: positions >= t do not change position t - 1
        token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t - 1, 1, False), -1)
        return jax.lax.dynamic_update_index_in_dim(buffer, token[:, None], t, 1), token

    _, tokens = jax.lax.scan(step, buffer, jnp.arange(p, total))
    return tokens.T


# --- the same model in plain JAX -----------------------------------------------------------------


def rms(x, scale, eps=1e-5):
    x32 = x.astype(jnp.float32)
    return (x32 * scale * jax.lax.rsqrt(jnp.mean(x32**2, -1, keepdims=True) + eps)).astype(x.dtype)


def rope(x, base=10000.0):
    t, d = x.shape[-3], x.shape[-1]
    inv = base ** (-jnp.arange(d // 2, dtype=jnp.float32) * 2.0 / d)
    ang = jnp.arange(t, dtype=jnp.float32)[:, None, None] * inv
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def plain_forward(p, tokens, heads, kv_heads):
    x = p["embed"][tokens]
    b, t, dim = x.shape
    hd = dim // heads
    causal = jnp.tril(jnp.ones((t, t), bool))

    def block(x, w):
        h = rms(x, w["n1"])
        q = rope(
            (h @ w["wq"]).reshape(b, t, kv_heads, heads // kv_heads, hd).reshape(b, t, heads, hd)
        )
        k = rope((h @ w["wk"]).reshape(b, t, kv_heads, hd))
        v = (h @ w["wv"]).reshape(b, t, kv_heads, hd)
        q = q.reshape(b, t, kv_heads, heads // kv_heads, hd)
        logits = jnp.einsum("btkgd,bskd->bkgts", q, k) / np.sqrt(hd)
        weights = jax.nn.softmax(jnp.where(causal, logits, -1e30))
        attn = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(b, t, dim)
        x = x + attn @ w["wo"]
        h = rms(x, w["n2"])
        return x + jax.nn.gelu(h @ w["up"] + w["up_b"]) @ w["down"] + w["down_b"], None

    x, _ = jax.lax.scan(jax.checkpoint(block, prevent_cse=False), x, p["blocks"])
    return rms(x, p["norm"]) @ p["head"] + p["head_b"]


def plain_params(model):
    s = model.blocks.stacked
    blocks = {"n1": s.norm1.scale, "n2": s.norm2.scale, "wq": s.attn.query_proj.weight,
              "wk": s.attn.key_proj.weight, "wv": s.attn.value_proj.weight,
              "wo": s.attn.out_proj.weight, "up": s.up.weight, "up_b": s.up.bias,
              "down": s.down.weight, "down_b": s.down.bias}  # fmt: skip
    return {"embed": model.embed.weight, "blocks": blocks, "norm": model.norm.scale,
            "head": model.head.weight, "head_b": model.head.bias}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--round-steps", type=int, default=20)
    p.add_argument("--data", default=None)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    a = p.parse_args()
    dev = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), "
        f"{len(jax.devices())} device(s)"
    )

    # 2. training (also gives the model that the decoding part uses)
    argv = ["--steps", str(a.train_steps), "--no-progress", "--checkpoint", "", "--dim",
            str(a.dim), "--layers", str(a.layers), "--heads", "8", "--kv-heads", "2",
            "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len),
            "--sample-length", "300"]  # fmt: skip
    if a.data:
        argv += ["--data", a.data]
    args = gpt.parse_args(argv)
    start = time.perf_counter()
    out = gpt.run(args, devices=jax.devices()[:1])
    train_s = time.perf_counter() - start
    losses = out["losses"]
    model = out["model"]

    # 1. decoding
    ev = model.eval()
    vocab = out["vocab"]
    prompt = jnp.asarray(vocab.encode(gpt.load_text(a.data)[:20]))[None]
    n = a.new_tokens
    key = jax.random.PRNGKey(0)
    cached = gpt.generate_tokens(ev, prompt, key, n, 0.0)
    buffer = jnp.zeros((1, prompt.shape[1] + n), jnp.int32)
    recomputed = recompute_tokens(ev, prompt, buffer)
    same = int((np.asarray(cached) == np.asarray(recomputed)).mean() * 100)
    t_cache = timed(lambda: gpt.generate_tokens(ev, prompt, key, n, 0.0), a.runs)
    t_full = timed(lambda: recompute_tokens(ev, prompt, buffer), a.runs)

    # 3. step time: pax against plain jax.lax.scan, same parameters, same update
    args.steps = a.train_steps
    pmodel, popt = gpt.build(args, len(vocab))
    data = gpt.batches(vocab.encode(gpt.load_text(a.data)), a.batch_size, a.seq_len, 0)
    batch = [jnp.asarray(x) for x in next(data)]
    pax_step = jax.jit(gpt.pax.utils.build_update_fn(gpt.loss_fn, jit=False), donate_argnums=(0, 1))
    decayed = ("wq", "wk", "wv", "wo", "up", "down", "head")  # the pax model's ".weight"s
    mask = lambda ps: {k: (k in decayed if k != "blocks" else {b: b in decayed for b in v})
                       for k, v in ps.items()}  # fmt: skip
    warmup = min(args.warmup, max(args.steps - 1, 1))
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, warmup, max(args.steps, 2))
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1, mask=mask)
    )
    params = jax.tree_util.tree_map(jnp.array, plain_params(pmodel))  # copies: pax donates
    state = tx.init(params)

    def plain_loss(params, batch):
        logits = plain_forward(params, batch[0], 8, 2)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    @partial_jit
    def plain_step(params, state, batch):
        loss, grads = jax.value_and_grad(plain_loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return loss, optax.apply_updates(params, updates), state

    ref = float(gpt.loss_fn(pmodel.parameters(), pmodel, batch)[0])
    np.testing.assert_allclose(float(plain_loss(params, batch)), ref, rtol=1e-4)
    pax_state = [pmodel, popt]
    plain_state = [params, state]

    def run_pax():
        for _ in range(a.round_steps):
            loss, pax_state[0], pax_state[1] = pax_step(pax_state[0], pax_state[1], batch)
        return loss

    def run_plain():
        for _ in range(a.round_steps):
            loss, plain_state[0], plain_state[1] = plain_step(plain_state[0], plain_state[1], batch)
        return loss

    jax.block_until_ready(run_pax()), jax.block_until_ready(run_plain())
    t_pax, t_plain = [], []
    for _ in range(a.runs):
        t_pax.append(timed(run_pax, 1) / a.round_steps)
        t_plain.append(timed(run_plain, 1) / a.round_steps)
    sp, sj = statistics.median(t_pax), statistics.median(t_plain)

    print("\n| measure | value |\n|---|---|")
    print(
        f"| model | GPT dim {a.dim}, {a.layers} layers, 8 heads / 2 kv heads, vocab {len(vocab)} |"
    )
    print(f"| decode, KV cache ({n} tokens, median of {a.runs}) | {n / t_cache:,.0f} tokens/s |")
    print(f"| decode, recompute the prefix | {n / t_full:,.0f} tokens/s |")
    print(f"| speed-up | {t_full / t_cache:.1f}x (greedy tokens equal: {same}%) |")
    print(
        f"| train loss, first / after {a.train_steps} steps (batch {a.batch_size} x "
        f"{a.seq_len}) | {losses[0]:.3f} / {np.mean(losses[-20:]):.3f} (mean of last 20) |"
    )
    print(f"| training wall time | {train_s:.1f} s |")
    print(f"| step time, pax (median of {a.runs} x {a.round_steps}) | {sp * 1e3:.2f} ms |")
    print(f"| step time, plain jax.lax.scan | {sj * 1e3:.2f} ms |")
    print(f"| ratio pax / plain | {sp / sj:.3f}x |")
    print(f"\nsample:\n{out['sample']}")


def partial_jit(fn):
    return jax.jit(fn, donate_argnums=(0, 1))


if __name__ == "__main__":
    main()
