"""The model and cached generation of examples/gpt.py written with Flax NNX, for a line count.

Flax NNX's `nnx.MultiHeadAttention` has a KV cache but neither grouped-query attention nor
rotary embeddings, so attention is written by hand here, as a user porting the example would.
Run: ``python scripts/gpt_nnx.py`` (needs flax; see scripts/requirements-bench.txt) prints
the line counts of this file's model + generation and of examples/gpt.py's, and checks that
cached greedy decoding equals recomputing the prefix.
"""

from __future__ import annotations

import ast
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# --- model + generation (counted) ---
def rope(x, offset):
    t, d = x.shape[-3], x.shape[-1]
    inv = 10000.0 ** (-jnp.arange(d // 2) * 2.0 / d)
    ang = (offset + jnp.arange(t))[:, None, None] * inv
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return jnp.concatenate(
        [x1 * jnp.cos(ang) - x2 * jnp.sin(ang), x2 * jnp.cos(ang) + x1 * jnp.sin(ang)], -1
    )


class Cache(nnx.Variable):
    pass


class Attention(nnx.Module):
    def __init__(self, dim, heads, kv_heads, rngs):
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.q = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.k = nnx.Linear(dim, kv_heads * self.hd, use_bias=False, rngs=rngs)
        self.v = nnx.Linear(dim, kv_heads * self.hd, use_bias=False, rngs=rngs)
        self.o = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.cache_k = self.cache_v = self.index = nnx.data(None)

    def init_cache(self, batch, max_len):
        shape = (batch, max_len, self.kv_heads, self.hd)
        self.cache_k, self.cache_v = Cache(jnp.zeros(shape)), Cache(jnp.zeros(shape))
        self.index = Cache(jnp.array(0, jnp.int32))

    def __call__(self, x, decode=False):
        b, t, _ = x.shape
        g = self.heads // self.kv_heads
        q = self.q(x).reshape(b, t, self.heads, self.hd)
        k = self.k(x).reshape(b, t, self.kv_heads, self.hd)
        v = self.v(x).reshape(b, t, self.kv_heads, self.hd)
        if decode and self.index is None:
            raise ValueError("call init_cache first")
        offset = self.index.value if decode else 0
        q, k = rope(q, offset), rope(k, offset)
        if decode:
            self.cache_k.value = jax.lax.dynamic_update_slice_in_dim(
                self.cache_k.value, k, offset, 1
            )
            self.cache_v.value = jax.lax.dynamic_update_slice_in_dim(
                self.cache_v.value, v, offset, 1
            )
            self.index.value = offset + t
            k, v = self.cache_k.value, self.cache_v.value
        s = k.shape[1]
        mask = jnp.arange(s)[None, :] <= (offset + jnp.arange(t))[:, None]
        q = q.reshape(b, t, self.kv_heads, g, self.hd)
        logits = jnp.einsum("btkgd,bskd->bkgts", q, k) / np.sqrt(self.hd)
        w = jax.nn.softmax(jnp.where(mask, logits, -1e30))
        return self.o(jnp.einsum("bkgts,bskd->btkgd", w, v).reshape(b, t, -1))


class Block(nnx.Module):
    def __init__(self, dim, heads, kv_heads, rngs):
        self.norm1, self.norm2 = nnx.RMSNorm(dim, rngs=rngs), nnx.RMSNorm(dim, rngs=rngs)
        self.attn = Attention(dim, heads, kv_heads, rngs)
        self.up, self.down = (
            nnx.Linear(dim, 4 * dim, rngs=rngs),
            nnx.Linear(4 * dim, dim, rngs=rngs),
        )

    def __call__(self, x, decode=False):
        x = x + self.attn(self.norm1(x), decode)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class GPT(nnx.Module):
    def __init__(self, vocab, dim, layers, heads, kv_heads, rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)

        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(dim, heads, kv_heads, rngs)

        self.blocks = make(rngs)
        self.norm, self.head = nnx.RMSNorm(dim, rngs=rngs), nnx.Linear(dim, vocab, rngs=rngs)

    def init_cache(self, batch, max_len):
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def init(block):
            block.attn.init_cache(batch, max_len)

        init(self.blocks)

    def __call__(self, tokens, decode=False):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        @nnx.remat
        def run(x, block):
            return block(x, decode)

        return self.head(self.norm(run(self.embed(tokens), self.blocks)))


def sample_logits(logits, key, temperature, top_k):
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k:
        logits = jnp.where(logits < jax.lax.top_k(logits, top_k)[0][..., -1:], -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@partial(nnx.jit, static_argnames=("length", "temperature", "top_k"))
def generate_tokens(model, prompt, key, length, temperature=1.0, top_k=0):
    model.init_cache(prompt.shape[0], prompt.shape[1] + length)
    logits = model(prompt, decode=True)[:, -1]

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def step(carry, key):
        model, logits = carry
        token = sample_logits(logits, key, temperature, top_k)
        return (model, model(token[:, None], decode=True)[:, -1]), token

    _, tokens = step((model, logits), jax.random.split(key, length))
    return tokens.T


# --- end of the counted part ---


def count(path: Path, start: str, end: str) -> int:
    """Lines of code between two markers: no blank lines, comments or docstrings."""
    text = path.read_text()
    body = text[text.index(start) : text.index(end)]
    docs = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
            d = node.body[0]
            docs.update(range(d.lineno, d.end_lineno + 1))
    offset = text[: text.index(start)].count("\n")
    return sum(
        1
        for i, line in enumerate(body.splitlines(), offset + 1)
        if line.strip() and not line.strip().startswith("#") and i not in docs
    )


def main() -> None:
    model = GPT(65, 64, 2, 4, 2, nnx.Rngs(0))
    prompt = jnp.arange(5)[None] % 65
    cached = generate_tokens(model, prompt, jax.random.PRNGKey(0), 8, 0.0)
    seq = prompt
    for _ in range(8):
        seq = jnp.concatenate([seq, jnp.argmax(model(seq)[:, -1], -1)[:, None]], 1)
    np.testing.assert_array_equal(cached, seq[:, 5:])
    here = Path(__file__)
    nnx_lines = count(here, "# --- model + generation (counted) ---", "# --- end of the counted")
    example = here.parents[1] / "examples" / "gpt.py"
    pax_lines = count(example, "# --- model ---", "# --- training ---")
    print("cached greedy decoding equals recomputing the prefix (NNX): ok")
    print("| model + generation | pax (examples/gpt.py) | Flax NNX (scripts/gpt_nnx.py) |")
    print(f"|---|---|---|\n| lines of code | {pax_lines} | {nnx_lines} |")


if __name__ == "__main__":
    sys.exit(main())
