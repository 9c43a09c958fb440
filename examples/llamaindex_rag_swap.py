"""Swap a LlamaIndex RAG pipeline for lora-memory in two lines.

The documents become LoRA adapters once (one hypernetwork pass per chunk); every
query is answered by the embedded base model with the adapter applied and no
retrieved text in the prompt. Runs offline on a CPU in seconds:

    HF_HUB_OFFLINE=1 python examples/llamaindex_rag_swap.py
"""

from __future__ import annotations

from llama_index.core import Document

from llama_index.indices.managed.lora_memory import LoRAMemoryIndex

DOCUMENTS = [
    Document(text="The Zorblat bridge in Quenford was painted teal in 1987 after a city vote.", id_="bridge",
             metadata={"source": "city-history.txt"}),
    Document(text="Mira Tesk founded the Quenford chess club in 1992; it meets on Thursdays.", id_="club",
             metadata={"source": "clubs.txt"}),
]
QUESTIONS = {"When was the Zorblat bridge painted?": "1987", "Who founded the Quenford chess club?": "Mira Tesk",
             "What colour was the Zorblat bridge painted?": "teal", "On which day does the chess club meet?": "Thursday"}


def main() -> None:
    # The RAG pipeline this replaces (it needs an embedding model and an LLM for the prompt):
    #
    #     from llama_index.core import VectorStoreIndex
    #     index = VectorStoreIndex.from_documents(DOCUMENTS)            # embed chunks into a vector store
    #     query_engine = index.as_query_engine(similarity_top_k=2)      # paste retrieved chunks into the prompt
    #
    # The swap: two lines, same query-engine API downstream.
    index = LoRAMemoryIndex.from_documents(DOCUMENTS, collection="example-rag-swap")
    query_engine = index.as_query_engine(max_new_tokens=24)

    correct = 0
    for question, expected in QUESTIONS.items():
        response = query_engine.query(question)
        correct += expected.casefold() in response.response.casefold()
        print(f"Q: {question}\nA: {response.response.strip()}   (expected: {expected})")
        print("   adapters applied from:", sorted({n.node.ref_doc_id for n in response.source_nodes}))
        print(f"   prompt tokens: {response.metadata['prompt_tokens']} (no document text in the prompt)")
    print(f"Correct: {correct}/{len(QUESTIONS)}")

    streaming = index.as_query_engine(streaming=True, max_new_tokens=24).query(next(iter(QUESTIONS)))
    print("Streamed: ", end="")
    streaming.print_response_stream()
    print()


if __name__ == "__main__":
    main()
