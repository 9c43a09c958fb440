"""LlamaIndex on `lora-memory serve`: the memory is an OpenAI-compatible LLM (OpenAILike), no index in the process.

The documents are internalized by the server (its document route); the collection's
name is the model name, so every LlamaIndex component that takes an LLM answers
from the memory. Against a server you started (`lora-memory serve`):

    LORA_MEMORY_URL=http://127.0.0.1:8000/v1 python examples/llamaindex_server.py

Without LORA_MEMORY_URL the script serves the embedded model itself on 127.0.0.1, offline:

    HF_HUB_OFFLINE=1 python examples/llamaindex_server.py
"""

from __future__ import annotations

import os

import httpx
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

from lora_memory.server import running_or_local_server

COLLECTION = "example-llamaindex-server"
DOCUMENTS = {
    "bridge": "The Zorblat bridge in Quenford was painted teal in 1987 after a city vote.",
    "club": "Mira Tesk founded the Quenford chess club in 1992; it meets on Thursdays.",
}
QUESTIONS = ["When was the Zorblat bridge painted?", "Who founded the Quenford chess club?"]
API_KEY = os.environ.get("LORA_MEMORY_API_KEY", "none")


def main() -> None:
    with running_or_local_server() as base_url:
        for doc_id, text in DOCUMENTS.items():
            r = httpx.post(f"{base_url}/collections/{COLLECTION}/documents", json={"text": text, "id": doc_id},
                           headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300)
            r.raise_for_status()

        llm = OpenAILike(model=COLLECTION, api_base=base_url, api_key=API_KEY, is_chat_model=True,
                         context_window=8192, max_tokens=24, temperature=0.0)
        for question in QUESTIONS:
            response = llm.chat([ChatMessage(role="user", content=question)])
            sources = response.raw.model_extra["lora_memory"]["sources"]  # the applied chunks
            print(f"Q: {question}\nA: {response.message.content.strip()}")
            print("   adapters applied from:", sorted({s["doc_id"] for s in sources}))

        print("Streamed: ", end="")
        for piece in llm.stream_complete(QUESTIONS[1]):
            print(piece.delta, end="", flush=True)
        print()


if __name__ == "__main__":
    main()
