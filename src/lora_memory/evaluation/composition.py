"""Where composing chunk adapters loses accuracy (``lora-memory eval --prose --validation --composition``).

For a reader with a companion (``HypernetConfig.companion``) the routed top-k adapter has two parts: the
learned reader's modules and the companion's associative memory. This evaluation answers the written
questions' validation part (training-split articles that training never sees; never the held-out test
questions) with each part composed from a different number of routed chunks, so a drop at top-k can be
put on the part that causes it:

- both parts from the top-k chunks (what ``LoRAMemory`` applied before the fourteenth attempt), k = 1, 2, 4;
- the companion alone, and the learned reader alone, from the top-k chunks;
- one part from the top-1 chunk and the other from the top-k; the learned part from the top-1 chunk and the
  companion's memories of the top-k weighted by their routing relevance; and what ``LoRAMemory(top_k=k)``
  applies now (that, of the chunks whose relevance reaches the default ``min_relevance``);
- the companion's memories of the top-k chunks solved jointly (:meth:`AssociativeReader.joint_memory`)
  instead of concatenated;
- each chunk's companion memory cut to rank r (truncated SVD, :meth:`LoRAAdapter.compress`), for each r in
  ``ranks``.

Greedy decoding, 24 new tokens, scored by ``contains`` against the fact's first accepted answer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from tqdm.auto import tqdm

from ..adapter import LoRAAdapter
from ..base import LoadedModel
from ..chunking import chunk_text
from ..config import DEFAULT_MIN_RELEVANCE
from ..hypernet import DocToLoRA
from ..hypernet.associative import AssociativeReader
from ..training.d2l.prose import written_articles, written_questions
from .answering import greedy_answers
from .prose import ProseCollection, as_memory_applies
from .scoring import contains

TOP_KS = (1, 2, 4)


def merge(learned: LoRAAdapter, companion: LoRAAdapter, companion_modules: Collection[str]) -> LoRAAdapter:
    """The learned reader's modules of ``learned`` with the companion's modules of ``companion`` (both composed
    adapters of a reader with a companion, so both have scaling 1).
    """
    weights = {**learned.restrict(companion_modules, keep=False).weights,
               **companion.restrict(companion_modules).weights}
    return LoRAAdapter(weights, 1.0, dict(learned.metadata))


@torch.no_grad()
def evaluate_composition(hypernet: DocToLoRA, base: LoadedModel, articles: int = 60, ranks: Sequence[int] = (),
                         max_new_tokens: int = 24, progress: bool = True) -> dict[str, float]:
    """Contains per setting (see the module doc), plus ``n`` (questions) and ``articles``.

    Raises:
        ValueError: the hypernetwork has no associative companion.
    """
    companion = hypernet.companion
    if not isinstance(companion, AssociativeReader):
        raise ValueError("--composition compares a learned reader's part with its associative companion's: "
                         "this hypernetwork has no companion")
    hypernet.eval()
    theirs = hypernet.companion_modules
    valid = written_questions("valid")
    chosen = list(written_articles("valid")[:articles])
    coll = ProseCollection.build(hypernet, base, chosen)
    token_ids = [c.token_ids for a in chosen for c in chunk_text(base.tokenizer, a.text, hypernet.config.max_chunk_tokens)]
    cut = {r: [a.compress(r) for a in coll.adapters] for r in ranks}
    hits: dict[str, list[bool]] = {}
    for article in tqdm(chosen, desc="composition", disable=not progress):
        for wordings in valid[article.title]:
            question, answer = wordings[0].question, wordings[0].answer
            ranked = coll.top(question, max(TOP_KS))
            both = {k: hypernet.compose([coll.adapters[i] for i in ranked[:k]]) for k in TOP_KS}
            settings: dict[str, LoRAAdapter | None] = {"closed-book": None}
            for k in TOP_KS:
                settings[f"both parts, top-{k}"] = both[k]
            for k in TOP_KS:
                settings[f"companion alone, top-{k}"] = both[k].restrict(theirs)
            settings["learned reader alone, top-1"] = both[1].restrict(theirs, keep=False)
            for k in TOP_KS[1:]:
                settings[f"learned reader top-{k}, companion top-1"] = merge(both[k], both[1], theirs)
                settings[f"learned reader top-1, companion top-{k}"] = merge(both[1], both[k], theirs)
                found = coll.index.search(question, k)
                settings[f"learned reader top-1, companion top-{k} weighted by relevance"] = hypernet.compose(
                    [coll.adapters[i] for i, _, _ in found], relevance=[r for _, _, r in found])
                name = f"as LoRAMemory(top_k={k}) composes (relevance >= {DEFAULT_MIN_RELEVANCE}, weighted)"
                settings[name] = as_memory_applies(hypernet, coll, question, k)
                settings[f"both parts, top-{k}, companion solved jointly"] = merge(
                    both[k], companion.joint_memory(base, [token_ids[i] for i in ranked[:k]]), theirs)
            for r in ranks:
                for k in (1, max(TOP_KS)):
                    settings[f"both parts, top-{k}, companion rank {r} per chunk"] = hypernet.compose(
                        [cut[r][i] for i in ranked[:k]])
            names = list(settings)
            replies = greedy_answers(base, [question] * len(names), [settings[n] for n in names], max_new_tokens)
            for name, reply in zip(names, replies, strict=True):
                hits.setdefault(name, []).append(contains(reply, [answer]))
    n = len(hits["closed-book"])
    return {**{name: sum(v) / n for name, v in hits.items()}, "n": float(n), "articles": float(len(chosen))}


def composition_markdown(result: dict[str, float], hypernet_name: str) -> str:
    """The table of :func:`evaluate_composition`."""
    lines = [f"### Where composition loses (written validation questions), hypernetwork: {hypernet_name}", "",
             f"{result['n']:.0f} questions on {result['articles']:.0f} articles, BM25 routing over their chunks, "
             "greedy, contains.", "", "| setting | contains |", "|---|---:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in result.items() if name not in ("n", "articles")]
    return "\n".join(lines)
