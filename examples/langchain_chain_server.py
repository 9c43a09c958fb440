"""The LangChain chain of langchain_chain.py, with the memory behind `lora-memory serve` and ChatOpenAI as the client.

Any OpenAI client works: the collection's name is the model name. Against a server
you started yourself (`lora-memory serve`, then this script with its URL):

    LORA_MEMORY_URL=http://127.0.0.1:8000/v1 python examples/langchain_chain_server.py

Without LORA_MEMORY_URL the script serves the embedded model itself on 127.0.0.1
(a free port) for as long as it runs, offline:

    HF_HUB_OFFLINE=1 python examples/langchain_chain_server.py
"""

from __future__ import annotations

import os

import httpx
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from openai import OpenAI

from lora_memory.server import running_or_local_server

COLLECTION = "example-langchain-server"
DOCUMENTS = {
    "vacation": "New employees get 25 vacation days per year; unused days expire on March 31.",
    "expenses": "Expense reports are due within 30 days of the purchase, with receipts attached.",
}
API_KEY = os.environ.get("LORA_MEMORY_API_KEY", "none")  # the server's key, if it was started with one


def main() -> None:
    with running_or_local_server() as base_url:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        for doc_id, text in DOCUMENTS.items():  # internalize once; unchanged documents are skipped
            r = httpx.post(f"{base_url}/collections/{COLLECTION}/documents", json={"text": text, "id": doc_id},
                           headers=auth, timeout=300)
            r.raise_for_status()

        chat = ChatOpenAI(base_url=base_url, api_key=API_KEY, model=COLLECTION, max_tokens=24, temperature=0)
        prompt = ChatPromptTemplate.from_messages([("system", "Answer in one sentence."), ("human", "{question}")])
        chain = prompt | chat | StrOutputParser()
        print("A:", chain.invoke({"question": "How many vacation days do new employees get?"}).strip())

        print("Streamed: ", end="")
        for piece in chain.stream({"question": "When are expense reports due?"}):
            print(piece, end="", flush=True)
        print()

        message = chat.invoke("When do unused vacation days expire?")
        # ChatOpenAI keeps only OpenAI's fields; the applied chunks are in the response's extra `lora_memory`
        # field, which the openai client exposes:
        raw = OpenAI(base_url=base_url, api_key=API_KEY).chat.completions.create(
            model=COLLECTION, max_tokens=24, messages=[{"role": "user", "content": "When do unused vacation days "
                                                        "expire?"}])
        print("Sources:", [(s["doc_id"], s["chunk_index"]) for s in raw.model_extra["lora_memory"]["sources"]])
        print("Usage:", message.usage_metadata)


if __name__ == "__main__":
    main()
