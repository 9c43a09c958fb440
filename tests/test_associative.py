"""The associative reader: its closed-form memory, its fitted covariance, loading, and use in a memory."""

from __future__ import annotations

import pytest
import torch

from lora_memory.chunking import chunk_text
from lora_memory.errors import CorruptEntryError
from lora_memory.evaluation.answer_positions import _fact_nats
from lora_memory.hypernet import DocToLoRA, HypernetConfig
from lora_memory.hypernet.associative import AssociativeReader
from lora_memory.hypernet.encoding import chat_wrap_ids
from lora_memory.training.d2l.associative import covariance_texts
from lora_memory.training.d2l.prose import split_of_title, written_part
from memory_support import open_tiny_memory

TEXTS = ["Kigali is the capital of Rwanda. It was founded in 1907.",
         "The Vorland Bridge spans the river Ess. The engineer Mara Quill completed it in 1873.",
         "Honey bees live in colonies with one queen and many workers."]


@pytest.fixture(scope="module")
def reader(tiny_llama) -> AssociativeReader:
    fitted = AssociativeReader.fit(tiny_llama, TEXTS, progress=False, target_layers=[2], max_chunk_tokens=64)
    assert isinstance(fitted, AssociativeReader)
    return fitted


def test_the_covariance_is_the_keys_second_moment_plus_a_small_ridge(reader, tiny_llama):
    cov = reader.key_covariance[0]
    torch.testing.assert_close(cov, cov.T)
    assert torch.linalg.eigvalsh(cov).min() > 0  # invertible whatever the corpus
    chunks = [c for t in TEXTS for c in chunk_text(tiny_llama.tokenizer, t, 64)]
    keys = torch.cat([k[0] for k, _ in reader._pairs(tiny_llama, chunks)])
    second = keys.T @ keys / keys.shape[0]
    off = ~torch.eye(cov.shape[0], dtype=torch.bool)
    torch.testing.assert_close(cov[off], second[off])  # the ridge touches only the diagonal


def test_with_a_small_mu_the_memory_recalls_each_keys_next_token_embedding(tiny_llama):
    reader = AssociativeReader.fit(tiny_llama, TEXTS, progress=False, target_layers=[2], max_chunk_tokens=64,
                                   associative_mu=1e-4, associative_alpha=3.0)
    chunk = chunk_text(tiny_llama.tokenizer, "Kigali was founded in 1907.", 64)[0]
    adapter = reader.adapters_for_chunks(tiny_llama, [chunk])[0]
    name = reader.config.module_name(2)
    keys, nxt = reader._pairs(tiny_llama, [chunk])[0]
    assert adapter.rank == len(chunk.token_ids) - 1 < reader.config.module_d_in
    recalled = keys[0] @ adapter.delta(name).T  # (T-1, d_out)
    expected = 3.0 * tiny_llama.model.get_output_embeddings().weight[nxt].float()
    torch.testing.assert_close(recalled, expected, atol=2e-2, rtol=2e-2)


def test_composing_chunks_adds_their_memories(reader, tiny_llama):
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS[:2]]
    parts = reader.adapters_for_chunks(tiny_llama, chunks)
    name = reader.config.module_name(2)
    both = reader.compose(parts)
    torch.testing.assert_close(both.delta(name), parts[0].delta(name) + parts[1].delta(name), atol=1e-5, rtol=1e-4)


def test_it_saves_and_loads_through_doc_to_lora(reader, tiny_llama, tmp_path):
    reader.save_pretrained(tmp_path / "reader")
    loaded = DocToLoRA.from_pretrained(tmp_path / "reader", base=tiny_llama)
    assert isinstance(loaded, AssociativeReader) and loaded.fingerprint == reader.fingerprint
    chunk = chunk_text(tiny_llama.tokenizer, TEXTS[0], 64)[0]
    name = reader.config.module_name(2)
    torch.testing.assert_close(loaded.adapters_for_chunks(tiny_llama, [chunk])[0].delta(name),
                               reader.adapters_for_chunks(tiny_llama, [chunk])[0].delta(name))
    (tmp_path / "reader" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CorruptEntryError):
        DocToLoRA.from_pretrained(tmp_path / "reader")


def test_the_config_refuses_what_the_reader_cannot_do():
    with pytest.raises(ValueError, match="activation_keys"):
        HypernetConfig(reader="associative")  # dedupe_bias defaults on, keys off
    with pytest.raises(ValueError, match="dedupe_bias"):
        HypernetConfig(reader="associative", activation_keys=True, dedupe_bias=True)
    with pytest.raises(ValueError):
        HypernetConfig(reader="associative", activation_keys=True, chat_wrap=False, dedupe_bias=False,
                       associative_alpha=0.0)
    with pytest.raises(ValueError, match="associative_beta"):
        HypernetConfig().with_overrides(associative_beta=1.0)


def test_its_bias_is_the_empty_memory(reader):
    bias = reader.bias_adapter()
    assert all(not w.A.any() and not w.B.any() for w in bias.weights.values())


def test_a_batch_of_chunks_gets_the_memories_each_gets_alone(reader, tiny_llama):
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS]
    together = reader.adapters_for_chunks(tiny_llama, chunks, batch_size=3)
    name = reader.config.module_name(2)
    for chunk, adapter in zip(chunks, together, strict=True):
        alone = reader.adapters_for_chunks(tiny_llama, [chunk])[0]
        assert adapter.rank == alone.rank == len(chunk.token_ids) - 1
        scale = alone.delta(name).abs().max().item()
        torch.testing.assert_close(adapter.delta(name), alone.delta(name), atol=1e-3 * scale, rtol=1e-2)


def test_its_trained_maps_start_at_the_closed_form_and_get_gradients(reader, tiny_llama):
    mapped = AssociativeReader(reader.config.model_copy(update={"associative_map_rank": 4}))
    mapped.load_state_dict(reader.state_dict(), strict=False)
    chunk = chunk_text(tiny_llama.tokenizer, TEXTS[1], 64)[0]
    name = reader.config.module_name(2)
    torch.testing.assert_close(mapped.adapters_for_chunks(tiny_llama, [chunk])[0].delta(name),
                               reader.adapters_for_chunks(tiny_llama, [chunk])[0].delta(name))
    adapter = mapped(*mapped.encode(tiny_llama, [chunk.token_ids]))
    adapter.weights[name].A.sum().backward()
    assert mapped.query_u.grad is not None and mapped.query_u.grad.abs().sum() > 0
    assert mapped.key_covariance.grad is None  # the covariance is fitted, never trained
    with pytest.raises(ValueError, match="token embeddings"):
        mapped(torch.zeros(1), torch.ones(1, 2, dtype=torch.bool))


def test_a_memory_ingests_and_answers_with_it(reader, tiny_llama, tmp_path):
    memory = open_tiny_memory(tmp_path, "assoc", tiny_llama, reader)
    memory.add(TEXTS[1], doc_id="bridge")
    answer = memory.ask("When was the Vorland Bridge completed?")
    assert answer.sources and answer.sources[0].doc_id == "bridge"
    reopened = open_tiny_memory(tmp_path, "assoc", tiny_llama, reader)  # adapters come back from the cache
    assert reopened.ask("When was the Vorland Bridge completed?").text == answer.text


def test_the_covariance_corpus_never_reads_held_out_or_validation_articles():
    from lora_memory.training.d2l.prose import load_articles

    titles = {a.text: a.title for a in load_articles("train")}
    for text in covariance_texts(50):
        assert split_of_title(titles[text]) == "train" and written_part(titles[text]) == "train"


@pytest.mark.slow
def test_on_the_real_model_its_own_memory_makes_the_fact_likely(embedded_base):
    reader = AssociativeReader.fit(embedded_base, covariance_texts(20), progress=False)
    doc = "The Vorland Bridge spans the river Ess in Maretania. It was completed in 1873 by the engineer Mara Quill."
    other = "Honey bees live in colonies. A colony has one queen, many workers and, in summer, drones."
    own, elsewhere = (reader.internalize(embedded_base, t).as_batch() for t in (doc, other))
    question, sentence = "When was the Vorland Bridge completed?", "The Vorland Bridge was completed in 1873."
    span = [(sentence.index("1873"), sentence.index("1873") + 4)]
    nats = {name: _fact_nats(embedded_base, [question], [sentence], span, adapter)[0]
            for name, adapter in (("own", own), ("other", elsewhere), ("none", None))}
    assert nats["own"] < nats["none"] - 1.0 and nats["own"] < nats["other"] - 1.0, nats


def test_a_joint_memory_recalls_every_chunks_pairs_and_of_one_chunk_is_its_own_memory(tiny_llama):
    reader = AssociativeReader.fit(tiny_llama, TEXTS, progress=False, target_layers=[2], max_chunk_tokens=64,
                                   associative_mu=1e-4, associative_alpha=3.0)
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS[:2]]
    name = reader.config.module_name(2)
    ids = [c.token_ids for c in chunks]
    one = reader.joint_memory(tiny_llama, ids[:1])
    torch.testing.assert_close(one.delta(name), reader.adapters_for_chunks(tiny_llama, chunks[:1])[0].delta(name),
                               atol=1e-4, rtol=1e-3)
    joint = reader.joint_memory(tiny_llama, ids)
    assert joint.rank == sum(len(i) - 1 for i in ids) < reader.config.module_d_in
    embed = tiny_llama.model.get_output_embeddings().weight
    for keys, nxt in reader._pairs(tiny_llama, chunks):  # the joint solve fits both chunks' pairs at once
        torch.testing.assert_close(keys[0] @ joint.delta(name).T, 3.0 * embed[nxt].float(), atol=2e-2, rtol=2e-2)
    summed = reader.compose(reader.adapters_for_chunks(tiny_llama, chunks))
    assert not torch.allclose(joint.delta(name), summed.delta(name), atol=1e-3)  # not the concatenation


def test_read_as_a_chat_turn_it_stores_every_token_keyed_by_the_wrapped_pass(tiny_llama):
    """With chat_wrap the keys are the target module's inputs where the chunk sits inside a user turn: the turn
    opener's last token keys the chunk's first token, and nothing of the template itself is stored.
    """
    reader = AssociativeReader.fit(tiny_llama, TEXTS, progress=False, target_layers=[2], max_chunk_tokens=64,
                                   chat_wrap=True, associative_mu=1e-4, associative_alpha=3.0)
    chunk = chunk_text(tiny_llama.tokenizer, "Kigali was founded in 1907.", 64)[0]
    keys, stored = reader._pairs(tiny_llama, [chunk])[0]
    assert stored.tolist() == chunk.token_ids and reader.n_pairs(len(chunk.token_ids)) == len(chunk.token_ids)
    prefix, suffix = chat_wrap_ids(tiny_llama.tokenizer)
    captured = []
    module = tiny_llama.model.model.layers[2].mlp.down_proj
    handle = module.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            tiny_llama.model(torch.tensor([prefix + chunk.token_ids + suffix]))
    finally:
        handle.remove()
    n, p = len(chunk.token_ids), len(prefix)
    torch.testing.assert_close(keys[0], captured[0][0, p - 1: p - 1 + n].float())
    adapter = reader.adapters_for_chunks(tiny_llama, [chunk])[0]
    assert adapter.rank == n
    recalled = keys[0] @ adapter.delta(reader.config.module_name(2)).T
    expected = 3.0 * tiny_llama.model.get_output_embeddings().weight[stored].float()
    torch.testing.assert_close(recalled, expected, atol=2e-2, rtol=2e-2)
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS]  # padding leaves each memory as alone
    for one, alone in zip(reader.adapters_for_chunks(tiny_llama, chunks, batch_size=3), chunks, strict=True):
        single = reader.adapters_for_chunks(tiny_llama, [alone])[0]
        scale = single.delta(reader.config.module_name(2)).abs().max().item()
        assert one.rank == single.rank == len(alone.token_ids)
        torch.testing.assert_close(one.delta(reader.config.module_name(2)), single.delta(reader.config.module_name(2)),
                                   atol=1e-3 * scale, rtol=1e-2)
    joint = reader.joint_memory(tiny_llama, [chunk.token_ids])
    torch.testing.assert_close(joint.delta(reader.config.module_name(2)), adapter.delta(reader.config.module_name(2)),
                               atol=1e-4, rtol=1e-3)
