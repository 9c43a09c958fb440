"""Chat-formatted generation with an optional adapter: greedy by default, stop strings, streaming.

With no adapter the output equals plain ``model.generate`` on the same chat prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from pydantic import BaseModel as PydanticModel
from pydantic import Field
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from .adapter import LoRAAdapter
from .apply import apply_adapter

Messages = Sequence[dict[str, str]]


class GenerationConfig(PydanticModel):
    """Decoding settings shared by the library, the CLI and the framework wrappers."""

    max_new_tokens: int = Field(64, ge=1, description="Most tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when temperature > 0.")
    stop: list[str] = Field(default_factory=list, description="Generation ends before the first of these strings.")
    seed: int | None = Field(None, description="Seed for sampling; ignored when greedy.")


#: The generation settings a caller may override per call: the fields of :class:`GenerationConfig`, listed once.
GENERATION_FIELDS = frozenset(GenerationConfig.model_fields)


@dataclass
class Generated:
    """Generated text with token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages | str) -> torch.Tensor:
    """Token ids (1, T) of a chat prompt ending with the assistant's turn opener."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    enc: Any = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    return enc["input_ids"]


def _generate_kwargs(tokenizer: PreTrainedTokenizerBase, config: GenerationConfig) -> dict:
    kwargs: dict = {"max_new_tokens": config.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if config.temperature > 0:
        kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
        if config.seed is not None:
            torch.manual_seed(config.seed)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if config.stop:
        kwargs.update(stop_strings=list(config.stop), tokenizer=tokenizer)
    return kwargs


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages | str,
    adapter: LoRAAdapter | None = None,
    config: GenerationConfig | None = None,
) -> Generated:
    """Answer a chat prompt, with ``adapter`` applied if given."""
    config = config or GenerationConfig()
    ids = encode_chat(tokenizer, messages).to(model.device)
    with apply_adapter(model, adapter), torch.inference_mode():
        out = cast(Any, model).generate(ids, attention_mask=torch.ones_like(ids), **_generate_kwargs(tokenizer, config))
    new = out[0, ids.shape[1]:]
    text = _cut_at_stop(cast(str, tokenizer.decode(new, skip_special_tokens=True)), config.stop)
    return Generated(text=text, prompt_tokens=ids.shape[1], completion_tokens=int(new.numel()))


def stream(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages | str,
    adapter: LoRAAdapter | None = None,
    config: GenerationConfig | None = None,
) -> Iterator[str]:
    """Yield the answer's text piece by piece as it is generated.

    Generation runs in a worker thread that holds the model's adapter lock for its
    whole duration; the pieces join to the same text :func:`generate` returns. When
    the consumer stops early (a stop string, ``break``, or closing the iterator),
    the worker stops at its next token and releases the lock before this returns.
    """
    config = config or GenerationConfig()
    ids = encode_chat(tokenizer, messages).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with apply_adapter(model, adapter), torch.inference_mode():
                cast(Any, model).generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_StopWhenSet(cancelled)]),
                               **_generate_kwargs(tokenizer, config))
        except BaseException as exc:  # surfaced in the consumer thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    buffer, emitted = "", 0
    hold = max((len(s) - 1 for s in config.stop), default=0)  # a tail that may begin a stop string
    try:
        for piece in streamer:
            buffer += piece
            cut = _cut_at_stop(buffer, config.stop)
            if len(cut) < len(buffer):  # a stop string appeared: emit what precedes it and finish
                if len(cut) > emitted:
                    yield cut[emitted:]
                break
            if len(buffer) - hold > emitted:
                yield buffer[emitted: len(buffer) - hold]
                emitted = len(buffer) - hold
        else:
            if len(buffer) > emitted:
                yield buffer[emitted:]
    finally:  # also runs when the consumer closes the iterator early (GeneratorExit)
        cancelled.set()
        thread.join()
    if errors:
        raise errors[0]


class _StopWhenSet(StoppingCriteria):
    """Ends generation once ``event`` is set (the stream's consumer has gone)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, stop)
