"""Other ways to read composed companion memories (``lora-memory eval --prose --validation --companion-reads``).

The associative companion's adapter is linear: a query ``x`` at the target module gets ``B (A x)``, where the
coefficients ``c = A x`` have one entry per stored token of every composed chunk. Composing k chunks sums their
memories, so every chunk's memory adds its response to every query, and top-4 loses accuracy against top-1
(``evaluation.composition``). This evaluation tries two non-linear reads that a forward hook can do at query time,
with nothing retrained, on the written questions' validation part:

- **top-m read**: each token keeps only the ``m`` largest ``|c|`` over all composed chunks' stored tokens (a
  k-nearest-neighbour read of the memory), so weak, diffuse responses of unrelated chunks are dropped;
- **gated read**: each token reads only the one chunk memory whose coefficients are largest (``max |c_i|``), so at
  top-1 it is the linear read exactly, and at top-k a chunk's memory fires only where it matches best.

Each is scored for the companion alone and for both parts (the learned reader's modules composed as
``LoRAMemory`` composes them), against the linear read through the same hook. Greedy, 24 new tokens, contains.
Neither read is a LoRA (PEFT and vLLM cannot apply it), so they live here, not in the runtime.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapter import LoRAAdapter, LoRAWeights
from ..base import LoadedModel
from ..hypernet import DocToLoRA
from ..hypernet.associative import AssociativeReader
from ..training.d2l.prose import written_articles, written_questions
from .answering import greedy_answers
from .prose import ProseCollection
from .scoring import contains

Read = tuple[Literal["linear", "top", "gated"], int]  # (kind, m); m is used by "top" only


def pack(rows: Sequence[Sequence[LoRAWeights]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch row, its chunk memories as ``A`` (N, M, r, d_in) and ``B`` (N, M, d_out, r), zero-padded (a zero
    memory adds nothing and never wins a gate over a memory that responds).
    """
    m, r = max(len(row) for row in rows), max(w.rank for row in rows for w in row)
    first = rows[0][0]
    a = torch.zeros(len(rows), m, r, first.A.shape[-1])
    b = torch.zeros(len(rows), m, first.B.shape[0], r)
    for n, row in enumerate(rows):
        for j, w in enumerate(row):
            a[n, j, : w.rank] = w.A.float()
            b[n, j, :, : w.rank] = w.B.float()
    return a, b


def read_memories(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, read: Read) -> torch.Tensor:
    """The memories' output for inputs ``x`` (N, T, d_in) under ``read`` (see the module doc): (N, T, d_out)."""
    c = torch.einsum("ntd,nmrd->ntmr", x, a.to(x.dtype))  # one coefficient per stored token of each memory
    kind, m = read
    if kind == "top":
        flat = c.flatten(2)  # (N, T, M*r): every composed memory's stored tokens, per token
        if flat.shape[-1] > m:
            idx = flat.abs().topk(m, dim=-1).indices
            c = torch.zeros_like(flat).scatter(-1, idx, flat.gather(-1, idx)).view_as(c)
    elif kind == "gated":
        best = c.abs().amax(-1).argmax(-1)  # (N, T): the memory that responds most to each token
        c = c * nn.functional.one_hot(best, c.shape[2])[..., None].to(c.dtype)
    return torch.einsum("ntmr,nmor->nto", c, b.to(x.dtype))


@contextmanager
def companion_read(module: nn.Module, rows: Sequence[Sequence[LoRAWeights]], read: Read) -> Iterator[None]:
    """Add the rows' chunk memories, read as ``read``, to ``module``'s output while the block runs."""
    a, b = pack(rows)
    handle = module.register_forward_hook(lambda _m, inputs, output: output + read_memories(inputs[0], a, b, read))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def evaluate_companion_reads(hypernet: DocToLoRA, base: LoadedModel, articles: int = 60,
                             top_m: Sequence[int] = (2,), max_new_tokens: int = 24,
                             progress: bool = True) -> dict[str, float]:
    """Contains per setting (see the module doc), plus ``n`` (questions) and ``articles``.

    Raises:
        ValueError: the hypernetwork has no associative companion on one module.
    """
    companion = hypernet.companion
    if not isinstance(companion, AssociativeReader) or len(companion.config.layers) != 1:
        raise ValueError("--companion-reads reads an associative companion on one module: this hypernetwork has none")
    hypernet.eval()
    name = companion.config.module_name(companion.config.layers[0])
    module = dict(base.model.named_modules())[name]
    valid = written_questions("valid")
    chosen = list(written_articles("valid")[:articles])
    coll = ProseCollection.build(hypernet, base, chosen)
    reads: list[tuple[str, Read, tuple[int, ...]]] = [("linear read", ("linear", 0), (1, 4))]
    reads += [(f"top-{m} read", ("top", m), (1, 4)) for m in top_m]
    reads += [("gated read", ("gated", 0), (4,))]
    hits: dict[str, list[bool]] = {}
    for article in tqdm(chosen, desc="companion reads", disable=not progress):
        for wordings in valid[article.title]:
            question, answer = wordings[0].question, wordings[0].answer
            ranked = coll.top(question, 4)
            learned = {k: hypernet.compose([coll.adapters[i] for i in ranked[:k]]).restrict({name}, keep=False)
                       for k in (1, 4)}
            for label, read, ks in reads:
                rows: list[tuple[str, LoRAAdapter | None, list[LoRAWeights]]] = []
                for k in ks:
                    memories = [coll.adapters[i].weights[name] for i in ranked[:k]]
                    rows += [(f"companion alone, {label}, top-{k}", None, memories),
                             (f"both parts, {label}, top-{k}", learned[k], memories)]
                with companion_read(module, [memories for _, _, memories in rows], read):
                    replies = greedy_answers(base, [question] * len(rows), [adapter for _, adapter, _ in rows],
                                             max_new_tokens)
                for (setting, _, _), reply in zip(rows, replies, strict=True):
                    hits.setdefault(setting, []).append(contains(reply, [answer]))
    n = len(next(iter(hits.values())))
    return {**{setting: sum(v) / n for setting, v in sorted(hits.items())}, "n": float(n),
            "articles": float(len(chosen))}


def companion_reads_markdown(result: dict[str, float], hypernet_name: str) -> str:
    """The table of :func:`evaluate_companion_reads`."""
    lines = [f"### Reading composed companion memories (written validation questions), hypernetwork: {hypernet_name}",
             "", f"{result['n']:.0f} questions on {result['articles']:.0f} articles, BM25 routing over their chunks, "
             "greedy, contains.", "", "| setting | contains |", "|---|---:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in result.items() if name not in ("n", "articles")]
    return "\n".join(lines)
