"""A LangChain chain whose knowledge comes from lora-memory instead of a retriever.

HF_HUB_OFFLINE=1 python examples/langchain_chain.py
"""

from __future__ import annotations

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_lora_memory import ChatLoRAMemory

DOCUMENTS = [
    Document("New employees get 25 vacation days per year; unused days expire on March 31.", id="vacation",
             metadata={"source": "handbook.md"}),
    Document("Expense reports are due within 30 days of the purchase, with receipts attached.", id="expenses",
             metadata={"source": "handbook.md"}),
]
QUESTIONS = {"How many vacation days do new employees get?": "25",
             "When do unused vacation days expire?": "March 31",
             "Within how many days are expense reports due?": "30"}


def main() -> None:
    # The retrieval chain this replaces:
    #
    #     retriever = FAISS.from_documents(DOCUMENTS, embeddings).as_retriever()
    #     prompt = ChatPromptTemplate.from_template("Context: {context}\n\nQuestion: {question}")
    #     chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | parser
    #
    # With lora-memory the documents live in the model's adapter, so the prompt carries only the question.
    chat = ChatLoRAMemory.from_documents(DOCUMENTS, collection="example-langchain", max_tokens=24)
    prompt = ChatPromptTemplate.from_messages([("system", "Answer in one sentence."), ("human", "{question}")])
    chain = prompt | chat | StrOutputParser()

    correct = 0
    for question, expected in QUESTIONS.items():
        reply = chain.invoke({"question": question}).strip()
        correct += expected.casefold() in reply.casefold()
        print(f"Q: {question}\nA: {reply}   (expected: {expected})")
    print(f"Correct: {correct}/{len(QUESTIONS)}")

    print("Streamed: ", end="")
    for piece in chain.stream({"question": "When are expense reports due?"}):
        print(piece, end="", flush=True)
    print()

    message = chat.invoke("When do unused vacation days expire?")
    print("Sources:", [(s["doc_id"], s["chunk_index"]) for s in message.response_metadata["sources"]])
    print("Usage:", message.usage_metadata)


if __name__ == "__main__":
    main()
