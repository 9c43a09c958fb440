"""LoRAMemoryLLM (LangChain LLM) on the fake memory."""

from __future__ import annotations

import pytest

from langchain_lora_memory import LoRAMemoryLLM


@pytest.fixture
def memory(fake_memory):
    fake_memory.add_documents([("Mira Tesk founded the chess club.", "club", {})])
    return fake_memory


def test_invoke_answers_the_prompt_as_one_user_turn(memory):
    llm = LoRAMemoryLLM(memory=memory, max_tokens=4, task="be brief")
    assert llm.invoke("Who founded the club?") == "1 chunks say: Who"
    method, question, settings = memory.calls[-1]
    assert (method, question, settings["max_new_tokens"], settings["task"]) == ("ask", "Who founded the club?", 4,
                                                                                  "be brief")
    assert llm._llm_type == "lora-memory"


def test_stop_and_stream(memory):
    llm = LoRAMemoryLLM(memory=memory)
    assert llm.invoke("Who?", stop=["say"]) == "1 chunks "
    pieces = list(llm.stream("Who founded it?"))
    assert len(pieces) > 1 and "".join(pieces) == "1 chunks say: Who founded it?"
    assert memory.calls[-1][0] == "stream"


async def test_async_invoke_and_stream(memory):
    llm = LoRAMemoryLLM(memory=memory)
    text = await llm.ainvoke("Who?")
    pieces = [piece async for piece in llm.astream("Who?")]
    assert text == "".join(pieces) == "1 chunks say: Who?"
    assert [c[0] for c in memory.calls] == ["aask", "astream"]
