"""The package's public surface."""

from __future__ import annotations

from importlib import metadata

import langchain_lora_memory

EXPECTED_ALL = ["ChatLoRAMemory", "LoRAMemoryLLM", "__version__", "add_documents", "add_from_loader",
                "create_memory_tool"]


def test_all_is_explicit_and_importable():
    assert sorted(langchain_lora_memory.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert getattr(langchain_lora_memory, name) is not None


def test_version_comes_from_the_installed_distribution():
    assert langchain_lora_memory.__version__ == metadata.version("langchain-lora-memory")
