"""The chunked loss on trained positions (runtime/loss.py) equals the unchunked computation, and the
length-grouped order of unpacked runs (runtime/data.py group_by_length)."""

from __future__ import annotations

import pytest
from ftspec.runtime import data as rdata

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny():
    from ftspec.runtime.builtin import ensure_builtin
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(ensure_builtin()))
    model.config.use_cache = False
    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    # adapters start at B = 0; move them so the gradients reach every path
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def _batch(vocab: int, rows: int = 3, width: int = 29, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, width), generator=g)
    labels = ids.clone()
    mask = torch.ones_like(ids)
    labels[:, :9] = -100  # a prompt
    labels[1, 20:] = -100  # padding of a shorter row
    mask[1, 20:] = 0
    labels[2, 12:15] = -100  # a second untrained span (another turn's prompt)
    return {"input_ids": ids, "attention_mask": mask}, labels


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_chunked_loss_and_gradients_equal_the_unchunked(tiny, monkeypatch, chunk):
    from ftspec.runtime import loss as rloss

    monkeypatch.setattr(rloss, "CHUNK", chunk)
    inputs, labels = _batch(tiny.config.vocab_size)
    tiny.zero_grad()
    plain = rloss.loss_sum(tiny, None, inputs, labels)
    plain.backward()
    want = _grads(tiny)
    head = rloss.install(tiny)
    assert head is not None
    tiny.zero_grad()
    chunked = rloss.loss_sum(tiny, head, inputs, labels)
    chunked.backward()
    got = _grads(tiny)
    assert chunked.shape == () and chunked.dtype == torch.float32
    assert float(chunked) == pytest.approx(float(plain), rel=1e-5)
    assert set(got) == set(want)
    for name in want:
        scale = float(want[name].abs().max()) + 1e-12  # fp32 sums in another order: relative to the tensor
        torch.testing.assert_close(
            got[name], want[name], rtol=1e-3, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )
    # ordinary calls still get logits (generation, preference objectives, evaluation)
    with torch.no_grad():
        logits = tiny(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, tiny.config.vocab_size)


def test_no_trained_position_gives_a_zero_with_a_graph(tiny):
    from ftspec.runtime import loss as rloss

    head = rloss.install(tiny)
    inputs, labels = _batch(tiny.config.vocab_size)
    labels[:] = -100
    out = rloss.loss_sum(tiny, head, inputs, labels)
    assert float(out) == 0.0 and out.requires_grad


def test_unchunked_switch(monkeypatch, tiny):
    from ftspec.runtime import loss as rloss

    monkeypatch.setenv("FTSPEC_UNCHUNKED_LOSS", "1")
    assert rloss.supported(tiny) is False


def test_length_grouped_schedule_is_a_permutation_with_homogeneous_micro_batches():
    import random

    rng = random.Random(3)
    lengths = tuple(rng.choice([4, 8, 16, 300, 900]) for _ in range(997))
    grouped = rdata.Schedule(997, 4, 2, 2, seed=5, lengths=lengths)
    plain = rdata.Schedule(997, 4, 2, 2, seed=5)
    for epoch in (0, 1):
        order = grouped._order(epoch)
        assert sorted(order) == list(range(997))
    assert grouped._order(0) != grouped._order(1)

    # padding: the sum over micro batches of (rows x longest row) falls well below the ungrouped one
    def padded(schedule):
        total = 0
        for step in range(schedule.steps_per_epoch):
            for rank in (0, 1):
                for micro in schedule.micro_batches(step, rank):
                    total += len(micro) * max(lengths[i] for i in micro)
        return total

    assert padded(grouped) < 0.7 * padded(plain)
    # the epoch's longest batch comes first (an out-of-memory shows at step one)
    first = grouped.step_indices(0)
    assert max(lengths[i] for i in first) == max(lengths)
    # micro batch x accumulation at the same product keeps the order (OOM retry)
    halved = rdata.Schedule(997, 2, 4, 2, seed=5, lengths=lengths)
    assert halved.step_indices(3) == grouped.step_indices(3)


@pytest.mark.slow
def test_loss_curve_equals_the_unchunked_computation(tmp_path):
    """One real run each way (sequentially): the per-step training losses agree within tolerance."""
    from runtime_helpers import env_with, launch, train_losses, write_spec

    curves = []
    for unchunked in ("0", "1"):
        folder = tmp_path / f"u{unchunked}"
        folder.mkdir()
        spec = write_spec(
            folder,
            train_rows=64,
            eval_rows=8,
            training={"max_steps": 6, "logging_steps": 1, "eval_steps": 100, "save_steps": 100},
            hardware={"gpu": "cpu", "gpus_per_node": 1, "strategy": "single"},
        )
        result = launch(spec, build=folder / "build", env=env_with(FTSPEC_UNCHUNKED_LOSS=unchunked))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        curves.append(train_losses(folder / "runs" / "t"))
    chunked, plain = curves
    assert sorted(chunked) == sorted(plain) and len(plain) >= 6
    for step in plain:
        assert chunked[step] == pytest.approx(plain[step], rel=2e-4, abs=1e-5), step
