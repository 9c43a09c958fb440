"""Batched multi-adapter decoding and the continuous-batching scheduler, on tiny random models (fp32, exact).

The reference for every row is :func:`lora_memory.generation.generate` on that row alone.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from lora_memory.adapter import LoRAAdapter, LoRAWeights
from lora_memory.apply import apply_adapter
from lora_memory.decoding import DecodeBatch, TextTracker, sample_next, stack_adapters
from lora_memory.errors import IncompatibleAdapterError
from lora_memory.generation import GenerationConfig, encode_chat, generate
from lora_memory.scheduler import DecodeRequest, Scheduler, SchedulerClosedError

QUESTIONS = ["When is the launch?", "Who approves budgets above ten thousand euros, and why?", "Hi"]


def _ids(base, question: str) -> list[int]:
    return encode_chat(base.tokenizer, question)[0].tolist()


def _adapters(base, make_lora):
    """Three rows: a rank-4 adapter, none, and a rank-2 adapter with another scaling."""
    return [make_lora(base.model, rank=4, seed=1, std=0.3, scaling=1.5), None,
            make_lora(base.model, rank=2, seed=2, std=0.3, scaling=0.5)]


def test_stack_adapters_pads_ranks_and_folds_scalings(tiny_llama, make_lora):
    a, b = make_lora(tiny_llama.model, rank=4, scaling=2.0, seed=1), make_lora(tiny_llama.model, rank=2, seed=2)
    stacked = stack_adapters([a, None, b])
    name = next(iter(a.weights))
    assert stacked.scaling == 1.0 and stacked.rank == 4 and stacked.weights[name].A.shape[0] == 3
    rows = stacked.unbatch()
    for row, original in ((rows[0], a), (rows[2], b)):
        assert torch.allclose(row.delta(name), original.delta(name), atol=1e-5)
    assert rows[1].delta(name).abs().max() == 0
    assert stack_adapters([a]) is a and stack_adapters([None, None]) is None


def test_stack_adapters_pads_each_module_to_its_own_widest_row():
    """A rank-8 module beside a long companion memory is not padded to the memory's rank (wasted matmuls)."""
    a = LoRAAdapter({"narrow": LoRAWeights(torch.ones(2, 4), torch.ones(3, 2)),
                     "wide": LoRAWeights(torch.ones(9, 4), torch.ones(3, 9))})
    b = LoRAAdapter({"narrow": LoRAWeights(torch.ones(3, 4), torch.ones(3, 3))})
    stacked = stack_adapters([a, b])
    assert stacked.weights["narrow"].rank == 3 and stacked.weights["wide"].rank == 9
    assert torch.equal(stacked.unbatch()[1].delta("wide"), torch.zeros(3, 4))


def test_stack_adapters_rejects_rows_of_other_shapes(tiny_llama):
    a = LoRAAdapter({"m": LoRAWeights(torch.ones(2, 4), torch.ones(3, 2))})
    b = LoRAAdapter({"m": LoRAWeights(torch.ones(2, 5), torch.ones(3, 2))})
    with pytest.raises(ValueError, match="disagree"):
        stack_adapters([a, b])


def test_batched_rows_match_each_row_alone(tiny_base, make_lora):
    """Prefill rows of different lengths together, each with its own adapter: logits equal their solo runs."""
    base = tiny_base
    prompts, adapters = [_ids(base, q) for q in QUESTIONS], _adapters(base, make_lora)
    batch = DecodeBatch(base.model, base.tokenizer.pad_token_id)
    logits = batch.add(prompts, adapters)
    for i, (ids, adapter) in enumerate(zip(prompts, adapters)):
        with apply_adapter(base.model, adapter), torch.inference_mode():
            alone = base.model(torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(logits[i], alone, atol=1e-4), i
    assert batch.width == max(len(p) for p in prompts)


def test_prefill_gives_the_lm_head_one_contiguous_column_per_row(tiny_base, make_lora):
    """The LM head sees (n, 1, d) contiguous hidden states, not a strided view of the last column.

    A strided (n, 1, d) view makes F.linear multiply by a copy of the LM head expanded n
    times (most of a real prefill's time); ``logits_to_keep=1`` gave that view.
    """
    base = tiny_base
    prompts = [_ids(base, q) for q in QUESTIONS]
    seen = []
    handle = base.model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        DecodeBatch(base.model, base.tokenizer.pad_token_id).add(prompts, _adapters(base, make_lora))
    finally:
        handle.remove()
    (hidden,) = seen
    assert hidden.shape == (len(prompts), 1, base.model.config.hidden_size) and hidden.is_contiguous()


def test_rows_adapters_are_stacked_once_per_membership(tiny_llama, make_lora, monkeypatch):
    """Steps reuse the stacked adapter; a row leaving or joining restacks it (else rows get others' adapters)."""
    import lora_memory.decoding as decoding

    base = tiny_llama
    prompts, (a, _, b) = [_ids(base, q) for q in QUESTIONS], _adapters(base, make_lora)
    stacked: list[list] = []
    real = decoding.stack_adapters
    monkeypatch.setattr(decoding, "stack_adapters", lambda rows: stacked.append(list(rows)) or real(rows))
    batch = DecodeBatch(base.model, base.tokenizer.pad_token_id)
    tokens = batch.add(prompts[:2], [a, b]).argmax(-1)
    for _ in range(3):
        tokens = batch.step(tokens).argmax(-1)
    assert stacked == [[a, b], [a, b]]  # the prefill's, then one for all three steps
    batch.keep([1])  # row a leaves
    tokens = batch.step(tokens[1:]).argmax(-1)
    assert stacked[2:] == [[b]]
    joined = batch.add([prompts[2]], [a]).argmax(-1)  # a row joins
    tokens = torch.cat([tokens, joined])
    for _ in range(2):
        tokens = batch.step(tokens).argmax(-1)
    assert stacked[3:] == [[a], [b, a]]  # the joiner's prefill, then one restack for both steps


def test_rows_join_and_leave_between_steps_and_keep_their_tokens(tiny_llama, make_lora):
    """Greedy tokens of rows that join late and leave early equal generate() on each row alone."""
    base = tiny_llama
    prompts, adapters = [_ids(base, q) for q in QUESTIONS], _adapters(base, make_lora)
    n_new = [6, 3, 5]
    expected = []
    for ids, adapter, n in zip(prompts, adapters, n_new):
        with apply_adapter(base.model, adapter), torch.inference_mode():
            out = base.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=n, do_sample=False, eos_token_id=None,
                                      pad_token_id=base.tokenizer.pad_token_id)
        expected.append(out[0, len(ids):].tolist())

    batch = DecodeBatch(base.model, base.tokenizer.pad_token_id)
    got: list[list[int]] = [[], [], []]
    order = [0]  # row 0 alone first
    logits = batch.add([prompts[0]], [adapters[0]])
    got[0].append(int(logits[0].argmax()))
    logits = batch.step(torch.tensor([got[0][-1]]))
    got[0].append(int(logits[0].argmax()))
    joined = batch.add([prompts[1], prompts[2]], [adapters[1], adapters[2]])  # two rows join mid-answer
    order += [1, 2]
    for j, row in enumerate((1, 2)):
        got[row].append(int(joined[j].argmax()))
    while order:
        logits = batch.step(torch.tensor([got[r][-1] for r in order]))
        for i, r in enumerate(order):
            got[r].append(int(logits[i].argmax()))
        keep = [i for i, r in enumerate(order) if len(got[r]) < n_new[r]]
        batch.keep(keep)
        order = [order[i] for i in keep]
    assert got == expected
    assert len(batch) == 0 and batch.width == 0


def test_scheduler_matches_generate_under_concurrent_submits(tiny_llama, make_lora):
    base = tiny_llama
    adapters = _adapters(base, make_lora)
    configs = [GenerationConfig(max_new_tokens=n) for n in (7, 4, 9)]
    expected = [generate(base.model, base.tokenizer, q, a, c) for q, a, c in zip(QUESTIONS, adapters, configs)]
    with Scheduler(base.model, base.tokenizer, max_batch_size=8) as scheduler:
        results = [None] * 3

        def ask(i: int) -> None:
            handle = scheduler.submit(DecodeRequest(_ids(base, QUESTIONS[i]), adapters[i], configs[i]))
            pieces = list(handle)
            results[i] = ("".join(pieces), handle.result)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert scheduler.row_steps > scheduler.steps  # some steps decoded several rows at once
    for (text, result), want in zip(results, expected):
        assert text == result.text == want.text
        assert result.completion_tokens == want.completion_tokens
        assert result.prompt_tokens == want.prompt_tokens
        assert result.finish_reason in ("length", "stop")


def test_serialized_scheduler_decodes_one_row_at_a_time(tiny_llama):
    base = tiny_llama
    with Scheduler(base.model, base.tokenizer, max_batch_size=1) as scheduler:
        handles = [scheduler.submit(DecodeRequest(_ids(base, q), None, GenerationConfig(max_new_tokens=3)))
                   for q in QUESTIONS]
        texts = ["".join(h) for h in handles]
    assert scheduler.row_steps == scheduler.steps > 0
    assert texts == [generate(base.model, base.tokenizer, q, None, GenerationConfig(max_new_tokens=3)).text
                     for q in QUESTIONS]


def test_stop_strings_and_eos_end_rows_like_generate(tiny_llama):
    base = tiny_llama
    free = generate(base.model, base.tokenizer, QUESTIONS[0], None, GenerationConfig(max_new_tokens=12)).text
    stop = free[len(free) // 2: len(free) // 2 + 2]
    assert stop.strip(), free
    config = GenerationConfig(max_new_tokens=12, stop=[stop])
    want = generate(base.model, base.tokenizer, QUESTIONS[0], None, config).text
    with Scheduler(base.model, base.tokenizer) as scheduler:
        result = scheduler.generate(DecodeRequest(_ids(base, QUESTIONS[0]), None, config))
    assert result.text == want and stop not in result.text and result.finish_reason == "stop"
    assert result.completion_tokens < 12


def test_async_consumers_get_pieces_on_their_loop(tiny_llama):
    base = tiny_llama
    config = GenerationConfig(max_new_tokens=5)

    async def main(scheduler: Scheduler) -> list[str]:
        loop = asyncio.get_running_loop()
        handles = [scheduler.submit(DecodeRequest(_ids(base, q), None, config), loop) for q in QUESTIONS]

        async def collect(h):
            return "".join([piece async for piece in h])

        return await asyncio.gather(*(collect(h) for h in handles))

    with Scheduler(base.model, base.tokenizer) as scheduler:
        texts = asyncio.run(main(scheduler))
    assert texts == [generate(base.model, base.tokenizer, q, None, config).text for q in QUESTIONS]


def test_cancel_drops_a_row_and_close_drains_or_refuses(tiny_llama):
    base = tiny_llama
    long = GenerationConfig(max_new_tokens=2000)
    scheduler = Scheduler(base.model, base.tokenizer)
    handle = scheduler.submit(DecodeRequest(_ids(base, QUESTIONS[0]), None, long))
    next(iter(handle))  # decoding has started
    handle.cancel()
    for _ in handle:
        pass
    assert handle.result.finish_reason == "cancelled" and handle.result.completion_tokens < 2000
    inflight = scheduler.submit(DecodeRequest(_ids(base, QUESTIONS[1]), None, GenerationConfig(max_new_tokens=4)))
    scheduler.close(drain=True)
    assert "".join(inflight) and inflight.result.finish_reason in ("length", "stop")  # finished, not dropped
    with pytest.raises(SchedulerClosedError):
        scheduler.submit(DecodeRequest(_ids(base, QUESTIONS[0])))


def test_submit_rejects_bad_requests_and_a_failed_step_fails_only_its_rows(tiny_llama, monkeypatch):
    base = tiny_llama
    with Scheduler(base.model, base.tokenizer) as scheduler:
        with pytest.raises(ValueError, match="no tokens"):
            scheduler.submit(DecodeRequest([]))
        with pytest.raises(ValueError, match="context window"):
            scheduler.submit(DecodeRequest([1] * 10, None, GenerationConfig(max_new_tokens=5000)))
        wrong = LoRAAdapter({"model.layers.0.mlp.down_proj": LoRAWeights(torch.ones(2, 7), torch.ones(64, 2))})
        with pytest.raises(IncompatibleAdapterError):
            scheduler.submit(DecodeRequest([1, 2, 3], wrong))

        real_add = DecodeBatch.add

        def failing_add(self, prompts, adapters):
            if [1, 2, 3] in [list(p) for p in prompts]:
                raise RuntimeError("boom")
            return real_add(self, prompts, adapters)

        monkeypatch.setattr(DecodeBatch, "add", failing_add)
        with pytest.raises(RuntimeError, match="boom"):
            list(scheduler.submit(DecodeRequest([1, 2, 3])))
        ok = scheduler.generate(DecodeRequest(_ids(base, QUESTIONS[2]), None, GenerationConfig(max_new_tokens=3)))
        assert ok.completion_tokens >= 1  # the scheduler survived the failed step


def test_text_tracker_holds_back_stop_prefixes_and_partial_characters(tokenizer):
    ids = tokenizer("naïve café: the end", add_special_tokens=False).input_ids
    tracker = TextTracker(tokenizer, stop=[": the"])
    pieces = []
    for token in ids:
        piece, stopped = tracker.push(token)
        pieces.append(piece)
        assert "\ufffd" not in piece
        if stopped:
            break
    pieces.append(tracker.finish())
    assert "".join(pieces) == tracker.text == "naïve café"


def test_sample_next_is_greedy_at_zero_temperature_and_seeded_otherwise():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 2.1, -5.0]])
    greedy = GenerationConfig()
    sampled = GenerationConfig(temperature=1.0, top_p=0.5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample_next(logits, [greedy, sampled], [None, g1])
    b = sample_next(logits, [greedy, sampled], [None, g2])
    assert a[0] == 1 and torch.equal(a, b)
    assert a[1] == 1  # top_p=0.5 keeps only the most likely token of row 1
