"""Generation: equal to plain transformers, stop strings, streaming, adapters, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from lora_memory.adapter import LoRAAdapter, LoRAWeights
from lora_memory.apply import model_lock
from lora_memory.errors import IncompatibleAdapterError
from lora_memory.generation import GenerationConfig, encode_chat, generate, stream

PROMPT = "Name three colours of the rainbow."
GREEDY = GenerationConfig(max_new_tokens=24)


def _plain_generate(model, tokenizer, prompt, max_new_tokens) -> tuple[str, int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), ids.shape[1]


def test_no_adapter_equals_plain_transformers_generate(tiny_base):
    expected, prompt_len = _plain_generate(tiny_base.model, tiny_base.tokenizer, PROMPT, 24)
    got = generate(tiny_base.model, tiny_base.tokenizer, PROMPT, config=GREEDY)
    assert got.text == expected and got.text.strip()
    assert got.prompt_tokens == prompt_len
    assert 1 <= got.completion_tokens <= 24


def test_string_prompt_equals_single_user_message(tiny_llama):
    messages = [{"role": "user", "content": PROMPT}]
    assert torch.equal(encode_chat(tiny_llama.tokenizer, PROMPT), encode_chat(tiny_llama.tokenizer, messages))
    a = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=GREEDY)
    b = generate(tiny_llama.model, tiny_llama.tokenizer, messages, config=GREEDY)
    assert a == b


def test_adapter_generation_equals_merged_weights(tiny_llama, make_lora):
    adapter = make_lora(tiny_llama.model, rank=4, std=0.5, scaling=2.0)
    merged = copy.deepcopy(tiny_llama.model)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name in adapter.weights:
            modules[name].weight += adapter.delta(name)
    expected, _ = _plain_generate(merged, tiny_llama.tokenizer, PROMPT, 24)
    plain = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=GREEDY).text
    with_adapter = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, adapter=adapter, config=GREEDY).text
    assert with_adapter == expected
    assert with_adapter != plain  # the adapter really changed the output


@pytest.fixture(scope="module")
def reference_text(tiny_llama) -> str:
    text = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=GenerationConfig(max_new_tokens=40)).text
    assert len(text) > 30, text
    return text


def test_stop_string_cuts_before_its_first_occurrence(tiny_llama, reference_text):
    stop = reference_text[20:24]
    cfg = GenerationConfig(max_new_tokens=40, stop=[stop])
    got = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=cfg)
    assert got.text == reference_text[: reference_text.find(stop)]
    assert stop not in got.text
    assert got.completion_tokens < 40  # generation itself stopped early, not just the text


def test_earliest_of_several_stop_strings_wins(tiny_llama, reference_text):
    late, early = reference_text[25:29], reference_text[12:15]
    cfg = GenerationConfig(max_new_tokens=40, stop=[late, early])
    got = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=cfg)
    assert got.text == reference_text[: min(reference_text.find(early), reference_text.find(late))]


@pytest.mark.parametrize("stop_at", [None, (20, 24), (3, 9)])
def test_stream_pieces_join_to_generate_text(tiny_llama, reference_text, stop_at):
    stop = [] if stop_at is None else [reference_text[slice(*stop_at)]]
    cfg = GenerationConfig(max_new_tokens=40, stop=stop)
    pieces = list(stream(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=cfg))
    assert len(pieces) > 1 or stop_at == (3, 9)
    assert "".join(pieces) == generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=cfg).text


def test_stream_with_adapter_joins_to_generate_text(tiny_llama, make_lora):
    adapter = make_lora(tiny_llama.model, rank=4, std=0.5, scaling=2.0)
    pieces = list(stream(tiny_llama.model, tiny_llama.tokenizer, PROMPT, adapter=adapter, config=GREEDY))
    assert "".join(pieces) == generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, adapter=adapter,
                                       config=GREEDY).text


def test_closing_a_stream_early_stops_generation_and_frees_the_model(tiny_llama):
    steps = []
    handle = tiny_llama.model.register_forward_hook(lambda *_: steps.append(1))
    try:
        pieces = stream(tiny_llama.model, tiny_llama.tokenizer, PROMPT,
                        config=GenerationConfig(max_new_tokens=400, stop=[]))
        next(pieces)
        pieces.close()  # the consumer walks away after one piece
        stopped_at = len(steps)
    finally:
        handle.remove()
    assert stopped_at < 100  # not the 400 tokens it was allowed
    lock = model_lock(tiny_llama.model)
    assert lock.acquire(blocking=False)  # the worker is done and released the model
    lock.release()


def test_errors_in_the_stream_worker_propagate(tiny_llama):
    name, module = next((n, m) for n, m in tiny_llama.model.named_modules() if n.endswith("down_proj"))
    bad = LoRAAdapter({name: LoRAWeights(torch.zeros(2, module.in_features + 3), torch.zeros(module.out_features, 2))})
    before = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=GREEDY).text
    with pytest.raises(IncompatibleAdapterError):
        list(stream(tiny_llama.model, tiny_llama.tokenizer, PROMPT, adapter=bad, config=GREEDY))
    # the worker released the model's lock: a plain call afterwards runs (and is unchanged)
    assert generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=GREEDY).text == before


def test_sampling_with_a_seed_is_reproducible(tiny_llama):
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=123)
    first = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=cfg).text
    assert generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=cfg).text == first
    other = generate(tiny_llama.model, tiny_llama.tokenizer, PROMPT, config=cfg.model_copy(update={"seed": 7})).text
    assert other != first


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -0.1), ("top_p", 0.0),
                                         ("top_p", 1.5)])
def test_generation_config_rejects_bad_values(field, value):
    with pytest.raises(ValidationError, match=field):
        GenerationConfig(**{field: value})
