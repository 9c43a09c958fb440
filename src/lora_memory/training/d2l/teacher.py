"""The in-context teacher for context distillation, with its outputs cached on disk.

For a (document, question) pair the teacher is the frozen base model with the
document in its prompt. Its greedy response and, at each response token, its
top-k log-probabilities are computed once and kept in a diskcache (safetensors
bytes, never pickles), so every later epoch reads them instead of re-running
the long in-context pass.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import diskcache
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ...base import LoadedModel
from ...evaluation.prompts import in_context_prompt
from ...generation import GenerationConfig, encode_chat, generate
from ..batching import StudentBatch, student_batch
from .data import Example


class Teacher:
    """Computes and caches the in-context teacher's responses and top-k log-probabilities."""

    def __init__(self, base: LoadedModel, cache_dir: Path, top_k: int = 16, max_new_tokens: int = 32):
        self.base, self.top_k, self.max_new_tokens = base, top_k, max_new_tokens
        self.cache = diskcache.Cache(str(cache_dir))

    def _key(self, document: str, question: str) -> str:
        h = hashlib.sha256(f"{self.base.fingerprint}|{self.top_k}|{self.max_new_tokens}|".encode())
        h.update(document.encode() + b"\0" + question.encode())
        return h.hexdigest()

    @torch.no_grad()
    def targets(self, document: str, question: str) -> dict[str, torch.Tensor]:
        """``response`` (R,), ``top_ids`` (R, k), ``top_logprobs`` (R, k) for one pair."""
        key = self._key(document, question)
        blob = self.cache.get(key)
        if blob is not None:
            return load_bytes(blob)
        model, tok = self.base.model, self.base.tokenizer
        prompt = in_context_prompt(document, question)
        text = generate(model, tok, prompt, config=GenerationConfig(max_new_tokens=self.max_new_tokens)).text
        response = tok(text.strip(), add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = encode_chat(tok, prompt)[0].tolist()
        full = torch.tensor([ids + response], device=model.device)
        logits = model(full, use_cache=False).logits[0, len(ids) - 1: -1].float()  # predicts each response token
        top = torch.log_softmax(logits, -1).topk(self.top_k, dim=-1)
        out = {"response": torch.tensor(response), "top_ids": top.indices.cpu(), "top_logprobs": top.values.cpu()}
        self.cache.set(key, save_bytes(out))
        return out

    def student_batch(self, examples: list[Example]) -> tuple[StudentBatch, torch.Tensor, torch.Tensor]:
        """Question-only rows labelled with the teacher's responses, and the matching top-k targets."""
        prompts, answers, owner, ids, lps = [], [], [], [], []
        for i, ex in enumerate(examples):
            for qa in ex.qa:
                t = self.targets(ex.document, qa.question)
                prompts.append(qa.question)
                answers.append(t["response"].tolist())
                owner.append(i)
                ids.append(t["top_ids"])
                lps.append(t["top_logprobs"])
        return student_batch(self.base.tokenizer, prompts, answers, owner), torch.cat(ids), torch.cat(lps)
