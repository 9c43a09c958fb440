"""langchain-tests' standard chat-model integration suite on the real embedded model.

Answers are kept short (``max_tokens=8``) so the suite is quick on a CPU.
Unsupported features are declared through the suite's flags, each with its reason
(``langchain_standard_flags.StandardSuiteFlags``).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_standard_flags import StandardSuiteFlags
from langchain_tests.integration_tests import ChatModelIntegrationTests

pytestmark = pytest.mark.slow


class TestChatLoRAMemoryStandardIntegration(StandardSuiteFlags, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _bind_embedded_memory(self, embedded_memory: Any) -> None:
        self._memory = embedded_memory

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"memory": self._memory, "max_tokens": 8}
