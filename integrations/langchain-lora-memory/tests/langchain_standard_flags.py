"""The feature flags both langchain-tests standard suites read, declared once with their reasons."""

from __future__ import annotations

from langchain_lora_memory import ChatLoRAMemory


class StandardSuiteFlags:
    """Mixin for the standard unit and integration suites: the model class and what it does not support.

    List it before the suite's class so these properties override the suite's defaults.
    """

    @property
    def chat_model_class(self) -> type[ChatLoRAMemory]:
        return ChatLoRAMemory

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
