"""Translations between lora-memory values and LlamaIndex values (private)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

if TYPE_CHECKING:
    from lora_memory import Answer, Source


# LlamaIndex roles that a ChatML-style chat template knows under another name.
_ROLE_NAMES = {MessageRole.DEVELOPER: "system", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}


def chunk_node_id(doc_id: str, chunk_index: int) -> str:
    """The node id LlamaIndex sees for chunk ``chunk_index`` of document ``doc_id``."""
    return f"{doc_id}#chunk-{chunk_index}"


def source_to_node(source: Source) -> NodeWithScore:
    """An applied chunk as a scored node: its snippet as text, the document's metadata, the document as parent."""
    node = TextNode(
        id_=chunk_node_id(source.doc_id, source.chunk_index),
        text=source.snippet,
        metadata=dict(source.metadata),
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=source.doc_id)},
    )
    return NodeWithScore(node=node, score=source.score)


def answer_metadata(answer: Answer) -> dict[str, Any]:
    """What a response's ``metadata`` carries: the adapter's rank, timings and token counts."""
    return {
        "adapter_rank": answer.adapter_rank,
        "timings": dict(answer.timings),
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
    }


def to_chat_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex chat messages as the ``{"role", "content"}`` dicts the memory's chat template takes.

    Raises:
        ValueError: a message holds something other than text (images, audio...).
    """
    out = []
    for message in messages:
        if any(block.block_type != "text" for block in message.blocks):
            raise ValueError("lora-memory answers text only; a message holds a non-text block")
        out.append({"role": _ROLE_NAMES.get(message.role, message.role.value), "content": message.content or ""})
    return out


def check_generation_keys(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Generation overrides with ``None`` values dropped (None means the memory's default).

    Raises:
        TypeError: a key is not a generation setting (the message lists the valid ones).
    """
    from lora_memory.generation import GENERATION_FIELDS

    unknown = set(settings) - GENERATION_FIELDS
    if unknown:
        raise TypeError(f"unexpected argument(s) {sorted(unknown)}; generation settings are "
                        f"{sorted(GENERATION_FIELDS)}")
    return {key: value for key, value in settings.items() if value is not None}
