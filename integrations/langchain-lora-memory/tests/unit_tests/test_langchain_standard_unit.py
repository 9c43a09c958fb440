"""langchain-tests' standard chat-model unit suite on ChatLoRAMemory, over the fake memory.

Unsupported features are declared through the suite's flags (each with its reason,
in ``langchain_standard_flags.StandardSuiteFlags``), never skipped by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_standard_flags import StandardSuiteFlags
from langchain_tests.unit_tests import ChatModelUnitTests


class TestChatLoRAMemoryStandardUnit(StandardSuiteFlags, ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _bind_fake_memory(self, fake_memory: Any) -> None:
        self._memory = fake_memory

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"memory": self._memory}
