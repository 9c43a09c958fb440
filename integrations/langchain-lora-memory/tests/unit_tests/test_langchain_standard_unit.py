"""langchain-tests' standard chat-model unit suite on ChatLoRAMemory, over the fake memory.

Unsupported features are declared through the suite's flags (each with its reason),
never skipped by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_lora_memory import ChatLoRAMemory


class TestChatLoRAMemoryStandardUnit(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _bind_fake_memory(self, fake_memory: Any) -> None:
        self._memory = fake_memory

    @property
    def chat_model_class(self) -> type[ChatLoRAMemory]:
        return ChatLoRAMemory

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"memory": self._memory}

    @property
    def has_tool_calling(self) -> bool:
        return False  # the small text-only base model emits no tool calls; memories are tools, not tool users

    @property
    def has_structured_output(self) -> bool:
        return False  # no tool calling or constrained decoding to build it on

    @property
    def supports_json_mode(self) -> bool:
        return False  # no constrained decoding

    @property
    def supports_image_inputs(self) -> bool:
        return False  # text-only base model (non-text blocks raise ValueError)

    @property
    def supports_model_override(self) -> bool:
        return False  # the model is the memory's base model: its adapters fit no other, per call or otherwise
