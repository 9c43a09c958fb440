"""Give an agent two memories as tools: it asks questions, the memories answer through their adapters.

``create_memory_tool`` is the counterpart of ``create_retriever_tool``: the tool
returns an answer (content) and the applied chunks (artifact), not passages for
the agent's LLM to read. Any tool-calling chat model can drive it; to run offline
in seconds this example scripts the agent's decisions with LangChain's
``GenericFakeChatModel`` (replace ``planner`` with a real tool-calling model, e.g.
``init_chat_model(...).bind_tools(tools)``). The answers are real: the embedded
model with each memory's adapter applied.

    HF_HUB_OFFLINE=1 python examples/agent_with_memory_tool.py
"""

from __future__ import annotations

from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from langchain_lora_memory import create_memory_tool
from lora_memory import LoRAMemory

USER_QUESTION = "When is the launch, and who approves the budget?"
EXPECTED = {"project_notes": "March 14", "finance_rules": "Ana Ruiz"}  # what each tool's answer should contain


def build_tools() -> dict:
    """Two collections on one shared base model: project notes and finance rules."""
    notes = LoRAMemory.open("example-agent-notes")
    notes.add("The Atlas launch moved to March 14 because the supplier shipped late.", doc_id="launch")
    finance = LoRAMemory.open("example-agent-finance", base=notes.base)
    finance.add("Budgets above 10,000 euros are approved by the finance director, Ana Ruiz.", doc_id="budget")
    tools = [create_memory_tool(notes, "project_notes", "Dates and status of the Atlas project.", max_tokens=24),
             create_memory_tool(finance, "finance_rules", "Budget and spending rules.", max_tokens=24)]
    return {tool.name: tool for tool in tools}


def main() -> None:
    tools = build_tools()
    planner = GenericFakeChatModel(messages=iter([
        AIMessage("", tool_calls=[
            {"id": "1", "name": "project_notes", "args": {"query": "When is the Atlas launch?"}},
            {"id": "2", "name": "finance_rules", "args": {"query": "Who approves budgets above 10,000 euros?"}}]),
        AIMessage("Summary written from the tool answers above."),
    ]))

    messages: list[BaseMessage] = [HumanMessage(USER_QUESTION)]
    correct = 0
    while True:  # the usual tool-calling loop
        reply = planner.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            result = tools[call["name"]].invoke({**call, "type": "tool_call"})
            messages.append(result)
            correct += EXPECTED[call["name"]].casefold() in result.content.casefold()
            print(f"{call['name']}({call['args']['query']!r}) -> {result.content.strip()!r}"
                  f"   (expected: {EXPECTED[call['name']]})")
            print("   from:", [(s["doc_id"], s["snippet"][:40]) for s in result.artifact])
    print("Agent:", messages[-1].content)
    print(f"Correct: {correct}/{len(EXPECTED)}")


if __name__ == "__main__":
    main()
