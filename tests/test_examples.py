"""Smoke tests: each script in examples/ runs to the end on the embedded model (offline) and prints its results.

The two server variants serve the embedded model on 127.0.0.1 from the test process (loopback only).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize(("script", "expected"), [
    ("llamaindex_rag_swap.py", ["adapters applied from: ['bridge']", "adapters applied from: ['club']", "(no document text in the prompt)",
                                "Streamed: ", "Correct: "]),
    ("langchain_chain.py", ["A: ", "Correct: ", "Streamed: ", "Sources: [('vacation', 0)]", "'output_tokens': "]),
    ("agent_with_memory_tool.py", ["project_notes('When is the Atlas launch?') -> ", "from: [('launch', ",
                                   "finance_rules('Who approves budgets above 10,000 euros?') -> ",
                                   "from: [('budget', ", "Agent: ", "Correct: "]),
    pytest.param("langchain_chain_server.py", ["A: ", "Streamed: ", "Sources: [('vacation', 0)]", "'output_tokens': "],
                 marks=pytest.mark.allow_hosts(["127.0.0.1"])),  # it serves itself on loopback
    pytest.param("llamaindex_server.py", ["adapters applied from: ['bridge']", "adapters applied from: ['club']",
                                          "Streamed: "], marks=pytest.mark.allow_hosts(["127.0.0.1"])),
])
def test_example_runs(script: str, expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, f"{script} did not print {text!r}:\n{out}"
