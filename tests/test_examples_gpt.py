"""examples/gpt.py: a few training steps of a tiny GPT on a fake corpus, cached generation
against recomputing the prefix, resume, bfloat16 and FSDP; the longer run is slow."""

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
_spec = importlib.util.spec_from_file_location("pax_example_gpt", ROOT / "examples" / "gpt.py")
gpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpt)

FAKE = "ROMEO:\nWhat light through yonder window breaks?\nJULIET:\nAy me.\n" * 40
TINY = ["--steps", "4", "--batch-size", "8", "--seq-len", "16", "--dim", "16", "--layers",
        "2", "--heads", "4", "--kv-heads", "2", "--sample-length", "12", "--no-progress",
        "--warmup", "2"]  # fmt: skip


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(FAKE)
    return path


def _args(corpus, tmp_path, *extra):
    ckpt = str(tmp_path / "gpt")
    return gpt.parse_args([*TINY, "--data", str(corpus), "--checkpoint", ckpt, *extra])


def test_a_few_steps_train_sample_and_resume(corpus, tmp_path):
    out = gpt.run(_args(corpus, tmp_path, "--top-k", "3"))
    assert len(out["losses"]) == 4 and all(np.isfinite(out["losses"]))
    assert out["losses"][-1] < out["losses"][0]
    assert out["sample"].startswith("ROMEO:") and len(out["sample"]) == 6 + 12
    again = gpt.run(_args(corpus, tmp_path, "--resume", "--steps", "1"))
    assert np.isfinite(again["losses"][0]) and again["losses"][0] < out["losses"][0]
    # the checkpoints of steps 4 and 5 (the resumed run counts on from the latest step)
    assert out["step"] == 4 and again["step"] == 5
    manager = pax.CheckpointManager(str(tmp_path / "gpt"))
    assert manager.all_steps() == [4, 5]
    assert manager.metrics(5) == {"loss": pytest.approx(again["losses"][-1])}
    # --steps 0 --resume samples from the latest checkpoint and saves nothing new
    sample = gpt.run(_args(corpus, tmp_path, "--resume", "--steps", "0"))
    assert sample["step"] == 5 and manager.all_steps() == [4, 5]
    with pytest.raises(FileExistsError, match=r"already holds the checkpoints .*step 5.*--resume"):
        gpt.run(_args(corpus, tmp_path))  # a fresh run into a run's directory


def test_cached_generation_equals_recomputing_the_prefix(corpus, tmp_path):
    out = gpt.run(_args(corpus, tmp_path, "--checkpoint", ""))
    model, vocab = out["model"].eval(), out["vocab"]
    prompt = jnp.asarray(vocab.encode("JULIET:"))[None]
    greedy = gpt.generate_tokens(model, prompt, jax.random.PRNGKey(0), 10, 0.0)
    seq = prompt
    for _ in range(10):  # the reference: the whole prefix again for every token
        seq = jnp.concatenate([seq, jnp.argmax(model(seq)[:, -1], -1)[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, seq[:, prompt.shape[1] :])
    key = jax.random.PRNGKey(1)
    sampled = gpt.generate_tokens(model, prompt, key, 10, 0.7, 5)
    seq = prompt
    for k in jax.random.split(key, 10):
        token = gpt.sample_logits(model(seq)[:, -1], k, 0.7, 5)
        seq = jnp.concatenate([seq, token[:, None]], axis=1)
    np.testing.assert_array_equal(sampled, seq[:, prompt.shape[1] :])


def test_top_k_keeps_only_the_k_most_likely():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    draws = [int(gpt.sample_logits(logits, jax.random.PRNGKey(i), 1.0, 2)[0]) for i in range(40)]
    assert set(draws) == {2, 3}
    assert int(gpt.sample_logits(logits, jax.random.PRNGKey(0), 0.0, 0)[0]) == 3


def test_bfloat16_and_fsdp(corpus, tmp_path):
    out = gpt.run(_args(corpus, tmp_path, "--precision", "bfloat16", "--sharding", "fsdp",
                        "--checkpoint", ""))  # fmt: skip
    assert all(np.isfinite(out["losses"]))


def test_missing_data_and_bad_prompt_name_the_fix(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match=r"--data .*no such file\. Fix: download tiny"):
        gpt.load_text(str(tmp_path / "absent.txt"))
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint in --checkpoint.*Fix"):
        gpt.run(_args(corpus, tmp_path, "--resume"))
    vocab = gpt.Vocab("abc")
    with pytest.raises(ValueError, match=r"--prompt has characters not in the corpus: \['z'\]"):
        vocab.encode("az")
    assert vocab.decode(vocab.encode("cab")) == "cab"  # false alarm: known characters


@pytest.mark.slow
def test_tiny_shakespeare_loss_drops(tmp_path):
    if not gpt.DEFAULT_DATA.is_file():
        pytest.skip(f"tiny shakespeare is not at {gpt.DEFAULT_DATA}")
    args = gpt.parse_args(["--steps", "150", "--batch-size", "16", "--seq-len", "64", "--dim",
                           "64", "--layers", "2", "--no-progress", "--checkpoint", "",
                           "--sample-length", "100"])  # fmt: skip
    out = gpt.run(args)
    assert np.mean(out["losses"][-10:]) < 2.8 < out["losses"][0]
