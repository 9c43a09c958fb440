"""The OpenAI-compatible server on a tiny random model, through an in-process ASGI client (no sockets).

What the routes return and refuse: response shapes, streaming, errors as OpenAI
error bodies, the API key, the upload limit, collection names, document management.
The real clients against a live server on the embedded model are in test_server_clients.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from lora_memory import paths
from lora_memory.cli import main
from lora_memory.config import MemoryConfig
from lora_memory.generation import GenerationConfig, generate
from lora_memory.scheduler import Scheduler
from lora_memory.server import create_app, is_loopback, serve
from lora_memory.service import MemoryService
from memory_support import tiny_hypernet

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FACT = "The Atlas launch moved to March 14 because the supplier shipped late."


@pytest.fixture(scope="module")
def service(tiny_llama, tmp_path_factory) -> Iterator[MemoryService]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(paths.HOME_ENV, str(tmp_path_factory.mktemp("serve-home")))
        config = MemoryConfig(dtype="fp32", device="cpu", generation=GenerationConfig(max_new_tokens=6))
        scheduler = Scheduler(tiny_llama.model, tiny_llama.tokenizer, max_batch_size=4)
        service = MemoryService(config, tiny_llama, tiny_hypernet(tiny_llama), scheduler)
        try:
            yield service
        finally:
            scheduler.close()
            service.close()


@pytest.fixture(scope="module")
def client(service) -> Iterator[TestClient]:
    with TestClient(create_app(service, api_key=KEY, max_upload_bytes=4096), headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def notes(client) -> str:
    r = client.post("/v1/collections/notes/documents", json={"text": FACT, "id": "launch", "metadata": {"k": 1}})
    assert r.status_code == 201, r.text
    return "notes"


def _error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


def test_models_lists_collections_and_the_base_model(client, notes, service):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["notes", service.base_model_id]
    assert client.get("/v1/models/notes").json()["id"] == "notes"
    assert _error(client.get("/v1/models/nope"), 404)["code"] == "model_not_found"
    assert client.get("/health").json()["status"] == "ok"


def test_chat_completion_is_shaped_like_openai_and_matches_the_library(client, notes, service):
    question = "When is the Atlas launch?"
    r = client.post("/v1/chat/completions", json={"model": notes, "messages": [{"role": "user", "content": question}],
                                                  "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == notes
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    memory = service.memory(notes)
    want = memory.ask(question, max_new_tokens=5)
    assert choice["message"]["content"] == want.text
    assert body["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": want.completion_tokens,
                             "total_tokens": want.prompt_tokens + want.completion_tokens}
    extra = body["lora_memory"]
    assert [(s["doc_id"], s["chunk_index"]) for s in extra["sources"]] == [("launch", 0)]
    assert extra["adapter_rank"] > 0 and extra["closed_book"] is False


def test_closed_book_model_answers_without_an_adapter(client, service, tiny_llama):
    r = client.post("/v1/chat/completions", json={"model": service.base_model_id,
                                                  "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    body = r.json()
    want = generate(tiny_llama.model, tiny_llama.tokenizer, "Hi", None, GenerationConfig(max_new_tokens=4))
    assert body["choices"][0]["message"]["content"] == want.text
    assert body["lora_memory"] == {"sources": [], "adapter_rank": 0, "closed_book": True}


def _events(r) -> list:
    lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_chat_stream_sends_chunks_sources_usage_and_done(client, notes):
    request = {"model": notes, "messages": [{"role": "user", "content": "When is the Atlas launch?"}],
               "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=request) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = _events(r)
    whole = client.post("/v1/chat/completions", json={**request, "stream": False}).json()
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["lora_memory"]["sources"][0]["doc_id"] == "launch"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_text_completion_takes_a_raw_prompt_and_streams(client, notes, service, tiny_llama):
    r = client.post("/v1/completions", json={"model": notes, "prompt": "The Atlas launch is on", "max_tokens": 4})
    body = r.json()
    assert body["object"] == "text_completion" and body["usage"]["prompt_tokens"] == len(
        tiny_llama.tokenizer("The Atlas launch is on").input_ids)
    with client.stream("POST", "/v1/completions", json={"model": notes, "prompt": "The Atlas launch is on",
                                                         "max_tokens": 4, "stream": True}) as s:
        chunks = _events(s)
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]
    assert chunks[0]["lora_memory"]["sources"][0]["doc_id"] == "launch"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ({"model": "notes", "messages": []}, 400, "messages"),
    ({"model": "notes", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
    ({"model": "notes", "messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "temperature"),
    ({"model": "notes", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400,
     "tools"),
    ({"model": "notes", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, 400, None),
    ({"model": "missing", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
])
def test_bad_chat_requests_get_openai_error_bodies(client, notes, body, status, param):
    error = _error(client.post("/v1/chat/completions", json=body), status)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_malformed_json_and_unknown_routes_get_error_bodies(client):
    _error(client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
           400)
    _error(client.get("/v1/nothing-here"), 404)


def test_every_route_needs_the_api_key(service):
    with TestClient(create_app(service, api_key=KEY)) as anonymous:
        for method, path in [("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                             ("GET", "/v1/collections"), ("DELETE", "/v1/collections/notes/documents/launch")]:
            error = _error(anonymous.request(method, path), 401)
            assert error["code"] == "invalid_api_key"
        _error(anonymous.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert anonymous.get("/v1/models", headers=AUTH).status_code == 200


def test_binding_beyond_loopback_needs_a_key(service):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(ValueError, match="API key"):
        serve(service, host="0.0.0.0", port=1)


def test_cli_serve_refuses_a_public_address_without_a_key(monkeypatch, capsys):
    monkeypatch.delenv("LORA_MEMORY_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    assert "needs an API key" in capsys.readouterr().err


def test_uploads_over_the_limit_are_refused_before_ingest(client, monkeypatch, service):
    monkeypatch.setattr(service, "add_file", lambda *a, **k: pytest.fail("ingest ran"))
    big = b"word " * 2000  # 10,000 bytes, over the 4,096-byte limit
    error = _error(client.post("/v1/collections/notes/documents", files={"file": ("big.txt", big)}), 413)
    assert error["code"] == "request_too_large"


def test_document_management_round_trip(client, service):
    files = {"file": ("report.md", b"# Report\n\nThe budget owner is Ana Ruiz.")}
    r = client.post("/v1/collections/docs/documents", files=files, data={"metadata": json.dumps({"team": "ops"})})
    assert r.status_code == 201, r.text
    [info] = r.json()["data"]
    assert info["id"] == "report.md" and info["metadata"] == {"team": "ops"} and info["n_chunks"] >= 1
    html = b"<html><body><p>The office closes at 6 pm.</p><script>x()</script></body></html>"
    assert client.post("/v1/collections/docs/documents", files={"file": ("hours.html", html)},
                       data={"id": "hours"}).status_code == 201
    ids = [d["id"] for d in client.get("/v1/collections/docs/documents").json()["data"]]
    assert ids == ["report.md", "hours"]
    assert "docs" in [m["id"] for m in client.get("/v1/models").json()["data"]]

    before = client.get("/v1/collections/docs/documents/hours").json()
    r = client.put("/v1/collections/docs/documents/hours", json={"text": "The office closes at 7 pm."})
    assert r.status_code == 200, r.text
    assert r.json()["added_at"] >= before["added_at"] and r.json()["n_tokens"] != 0
    assert service.memory("docs").collection.read_chunk_text(
        service.memory("docs").collection.record("hours").chunks[0].key) == "The office closes at 7 pm."

    deleted = client.delete("/v1/collections/docs/documents/hours").json()
    assert deleted == {"id": "hours", "object": "document", "deleted": True}
    assert _error(client.get("/v1/collections/docs/documents/hours"), 404)["code"] == "document_not_found"
    assert _error(client.delete("/v1/collections/docs/documents/hours"), 404)["code"] == "document_not_found"
    assert {"id": "docs", "object": "collection", "documents": 1} in client.get("/v1/collections").json()["data"]


@pytest.mark.parametrize(("files", "json_body", "status"), [
    ({"file": ("evil.exe", b"MZ\x00\x00")}, None, 400),  # not an allowed suffix
    ({"file": ("binary.txt", b"\x00\x01\x02" * 50)}, None, 400),  # binary content
    ({"file": ("broken.pdf", b"%PDF-1.4 not really")}, None, 400),  # corrupt PDF
    ({"file": ("empty.md", b"   \n")}, None, 400),  # no text
    (None, {"text": "x", "unknown": 1}, 400),  # unknown field
])
def test_bad_uploads_are_refused_and_keep_the_collection(client, notes, service, files, json_body, status):
    before = service.memory(notes).list()
    r = client.post(f"/v1/collections/{notes}/documents", files=files, json=json_body)
    _error(r, status)
    assert service.memory(notes).list() == before


@pytest.mark.parametrize("name", ["..", "bad name", "-dash", ".hidden"])
def test_collection_names_are_validated_like_the_cli(client, name, service):
    r = client.post(f"/v1/collections/{name}/documents", json={"text": FACT})
    assert r.status_code in (400, 404), r.text
    _error(r, r.status_code)
    assert name not in [m["id"] for m in service.models()]


def test_unknown_collection_routes_are_404(client):
    assert _error(client.get("/v1/collections/absent/documents"), 404)["code"] == "model_not_found"
    _error(client.put("/v1/collections/absent/documents/x", json={"text": "y"}), 404)
