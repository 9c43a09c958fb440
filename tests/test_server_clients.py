"""Real OpenAI clients against a live ``lora-memory`` server on 127.0.0.1, with the embedded model.

A module fixture ingests two collections with the shipped hypernetwork and serves
them with uvicorn on a free loopback port. Sockets stay disabled for the rest of the
suite; these tests may connect to 127.0.0.1 only (pytest-socket's ``allow_hosts``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lora_memory import paths
from lora_memory.checkpoints import default_hypernet_dir
from lora_memory.config import MemoryConfig
from lora_memory.hypernet import DocToLoRA
from lora_memory.scheduler import Scheduler
from lora_memory.server import BackgroundServer, create_app
from lora_memory.service import MemoryService

pytestmark = [pytest.mark.slow, pytest.mark.allow_hosts(["127.0.0.1"])]

KEY = "sk-test-lora-memory"
NOTES = "The Atlas launch moved to March 14 because the supplier shipped late."
FINANCE = "Budgets above 10,000 euros are approved by the finance director, Ana Ruiz."
QUESTION = "When is the Atlas launch?"


@pytest.fixture(scope="module")
def live(embedded_base, tmp_path_factory) -> Iterator[tuple[str, MemoryService]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(paths.HOME_ENV, str(tmp_path_factory.mktemp("live-home")))
        hypernet = DocToLoRA.from_pretrained(default_hypernet_dir(), base=embedded_base)
        scheduler = Scheduler(embedded_base.model, embedded_base.tokenizer, max_batch_size=8)
        service = MemoryService(MemoryConfig(), embedded_base, hypernet, scheduler)
        service.add_text("notes", NOTES, "launch")
        service.add_text("finance", FINANCE, "budget")
        app = create_app(service, api_key=KEY)
        try:
            with BackgroundServer(app) as server:
                yield server.url, service
        finally:
            scheduler.close()
            service.close()


@pytest.fixture(scope="module")
def client(live):
    from openai import OpenAI

    return OpenAI(base_url=f"{live[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_server_binds_loopback_only(live):
    assert live[0].startswith("http://127.0.0.1:")


def test_openai_models_and_sync_chat(client, live):
    service = live[1]
    assert [m.id for m in client.models.list()] == ["finance", "notes", service.base_model_id]
    reply = client.chat.completions.create(model="notes", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=16, temperature=0)
    want = service.memory("notes").ask(QUESTION, max_new_tokens=16)
    assert reply.choices[0].message.content == want.text and want.text.strip()
    assert reply.usage.completion_tokens == want.completion_tokens
    extra = reply.model_extra["lora_memory"]
    assert [s["doc_id"] for s in extra["sources"]] == ["launch"] and extra["adapter_rank"] == want.adapter_rank > 0


def test_openai_streaming_chat_and_text_completion(client):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="notes", messages=messages, max_tokens=16)
    stream = client.chat.completions.create(model="notes", messages=messages, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert chunks[0].model_extra["lora_memory"]["sources"][0]["doc_id"] == "launch"

    text = client.completions.create(model="finance", prompt="Budgets above 10,000 euros are approved by",
                                     max_tokens=8)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="finance", prompt="Budgets above 10,000 euros are approved by", max_tokens=8, stream=True))
    assert streamed == text.choices[0].text and text.usage.completion_tokens >= 1


def test_openai_errors_map_to_client_exceptions(client, live):
    import openai

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="absent", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="notes", messages=[{"role": "user", "content": "x"}], n=2)
    anonymous = openai.OpenAI(base_url=f"{live[0]}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_concurrent_clients_on_different_collections_share_decode_steps(client, live):
    scheduler = live[1].scheduler
    steps, rows = scheduler.steps, scheduler.row_steps
    asks = [("notes", QUESTION), ("finance", "Who approves budgets above 10,000 euros?")] * 3
    with ThreadPoolExecutor(len(asks)) as pool:
        replies = list(pool.map(lambda a: client.chat.completions.create(
            model=a[0], messages=[{"role": "user", "content": a[1]}], max_tokens=12), asks))
    for (model, _), reply in zip(asks, replies):
        assert reply.choices[0].message.content.strip()
        assert reply.model_extra["lora_memory"]["sources"][0]["doc_id"] == {"notes": "launch",
                                                                           "finance": "budget"}[model]
    assert (scheduler.row_steps - rows) > 1.5 * (scheduler.steps - steps)  # rows of both collections batched


def test_langchain_chat_openai(client, live):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{live[0]}/v1", api_key=KEY, model="notes", max_tokens=16, temperature=0,
                      max_retries=0)
    message = chat.invoke(QUESTION)
    want = client.chat.completions.create(model="notes", messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=16, temperature=0).choices[0].message.content
    assert message.content == want
    assert message.usage_metadata["output_tokens"] >= 1
    assert "".join(chunk.content for chunk in chat.stream(QUESTION)) == want


def test_llamaindex_openai_like(client, live):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model="finance", api_base=f"{live[0]}/v1", api_key=KEY, is_chat_model=True,
                     context_window=8192, max_tokens=16, temperature=0, max_retries=0)
    question = "Who approves budgets above 10,000 euros?"
    want = client.chat.completions.create(model="finance", messages=[{"role": "user", "content": question}],
                                          max_tokens=16, temperature=0).choices[0].message.content
    assert llm.chat([ChatMessage(role="user", content=question)]).message.content == want
    assert "".join(r.delta for r in llm.stream_complete(question)) == llm.complete(question).text == want


def test_shutdown_finishes_in_flight_streams(live):
    url, service = live
    with BackgroundServer(create_app(service, api_key=KEY)) as server:
        request = {"model": "notes", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24,
                   "stream": True}
        lines = []
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=request,
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as r:
            stopper = None
            for line in r.iter_lines():
                lines.append(line)
                if stopper is None and line.startswith("data: "):  # the answer has begun: shut down now
                    stopper = threading.Thread(target=server.__exit__, args=(None, None, None))
                    stopper.start()
        stopper.join(60)
        assert not stopper.is_alive()
        assert [line for line in lines if line][-1] == "data: [DONE]"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"})
