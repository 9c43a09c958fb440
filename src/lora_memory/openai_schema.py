"""The OpenAI-compatible request bodies the server accepts, and the response objects it returns.

Requests are validated by pydantic (a bad field is a 400 naming it). Fields that
OpenAI clients send and that change nothing here (``user``, ``seed`` is honoured,
penalties of 0, ...) are accepted; fields this server cannot honour (``n > 1``,
tool calls, log probabilities, JSON mode, non-zero penalties) are rejected with
:class:`lora_memory.errors.UnsupportedRequestError` rather than silently ignored.
Unknown fields are ignored, as OpenAI-compatible servers do, so newer clients keep working.

Every response carries an extra ``lora_memory`` object (``sources``: the applied
chunks, ``adapter_rank``, ``closed_book``), which OpenAI clients keep as an extra
attribute and otherwise ignore.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from .errors import UnsupportedRequestError
from .generation import GenerationConfig


class TextPart(BaseModel):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message; ``developer`` is read as ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    model_config = {"extra": "ignore"}

    def as_dict(self) -> dict[str, str]:
        """``{"role", "content"}`` as the chat template takes it."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    """``stream_options`` of a streaming request."""
    include_usage: bool = False

    model_config = {"extra": "ignore"}


class _Sampling(BaseModel):
    """Fields shared by chat and text completions."""

    model: str = Field(description="A collection's name, or the base model's for a closed-book answer.")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer clients' name for max_tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    seed: int | None = None
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    model_config = {"extra": "ignore"}

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    def check_supported(self) -> None:
        """Raise for what this server cannot do.

        Raises:
            UnsupportedRequestError: names the field.
        """
        if self.n != 1:
            raise UnsupportedRequestError("only n=1 is supported", "n")
        if self.tools or self.functions:
            raise UnsupportedRequestError("tool and function calling are not supported", "tools")
        if self.logprobs:
            raise UnsupportedRequestError("logprobs are not supported", "logprobs")
        if self.presence_penalty or self.frequency_penalty:
            raise UnsupportedRequestError("presence and frequency penalties are not supported", "presence_penalty")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise UnsupportedRequestError("only the text response format is supported", "response_format")

    def generation(self, defaults: GenerationConfig) -> GenerationConfig:
        """The decoding settings of this request, ``defaults`` for what it leaves out."""
        given: dict[str, Any] = {"max_new_tokens": self.max_completion_tokens or self.max_tokens
                                 or defaults.max_new_tokens, "stop": list(self.stop or [])}
        for key in ("temperature", "top_p", "seed"):
            if getattr(self, key) is not None:
                given[key] = getattr(self, key)
        return GenerationConfig(**{**defaults.model_dump(), **given})

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)

    def as_messages(self) -> list[dict[str, str]]:
        """The messages as role/content dicts for the chat template."""
        return [m.as_dict() for m in self.messages]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is plain text (no chat template)."""

    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompt_text(self) -> str:
        """The one prompt (a list must hold exactly one).

        Raises:
            UnsupportedRequestError: several prompts, ``echo``, ``suffix`` or ``best_of`` > 1.
        """
        if self.echo or self.suffix or (self.best_of or 1) > 1:
            raise UnsupportedRequestError("echo, suffix and best_of are not supported", "echo")
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise UnsupportedRequestError("send one prompt per request", "prompt")
        return self.prompt[0]


class DocumentText(BaseModel):
    """``POST /v1/collections/{name}/documents`` (JSON) and ``PUT .../documents/{id}``: a text document."""

    text: str
    id: str | None = Field(None, description="The document's id (default: a hash of the text).")
    metadata: dict[str, Any] | None = None

    model_config = {"extra": "forbid"}


# ------------------------------------------------------------------ responses
def new_id(prefix: str) -> str:
    """A fresh response id with the OpenAI-style ``prefix``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object of a response."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(response_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    """A complete ``chat.completion`` response body."""
    return {"id": response_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens), "lora_memory": extra}


def chat_chunk(response_id: str, model: str, delta: dict[str, str], finish_reason: str | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a streamed response."""
    chunk: dict[str, Any] = {"id": response_id, "object": "chat.completion.chunk", "created": int(time.time()),
                             "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                          "finish_reason": finish_reason}]}
    if extra is not None:
        chunk["lora_memory"] = extra
    return chunk


def text_completion(response_id: str, model: str, text: str, finish_reason: str | None,
                    extra: dict[str, Any] | None = None, tokens: tuple[int, int] | None = None) -> dict[str, Any]:
    """A ``text_completion`` object: the whole answer, or (without ``tokens``) one streamed piece."""
    out: dict[str, Any] = {"id": response_id, "object": "text_completion", "created": int(time.time()),
                           "model": model, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                        "finish_reason": finish_reason}]}
    if tokens is not None:
        out["usage"] = usage(*tokens)
    if extra is not None:
        out["lora_memory"] = extra
    return out


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
