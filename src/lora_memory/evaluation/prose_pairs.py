"""Questions that need two chunks (``lora-memory eval --prose --two-chunk``).

The hand-written held-out questions (``prose_questions.json``) are paired across articles: the first
question of article i with the first question of article i + 1, asked as one prompt ("Answer both
questions. 1. ... 2. ..."). A reply counts only if it contains an accepted answer of *both*; each half is
reported too. No single chunk answers such a question, so it measures what composing two chunks' adapters
holds at once. Settings: closed-book; in context (both articles in the prompt); RAG (the BM25 top-2 chunks
of the whole collection for the paired prompt); internalized with the BM25 top-2 chunk adapters composed
(what ``LoRAMemory`` applies with ``top_k=2``); internalized with both articles' chunks composed (routing
removed). Greedy decoding, 48 new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..adapter import LoRAAdapter
from ..base import LoadedModel
from ..hypernet import DocToLoRA
from ..training.d2l.prose import load_articles
from .answering import greedy_answers
from .prompts import in_context_prompt
from .prose import ProseCollection, ProseQuestion, handwritten_questions, routed_compositions
from .scoring import contains

MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class QuestionPair:
    """Two questions about different articles, asked as one prompt."""

    first: ProseQuestion
    second: ProseQuestion

    @property
    def prompt(self) -> str:
        return f"Answer both questions.\n1. {self.first.question}\n2. {self.second.question}"


def question_pairs(questions: list[ProseQuestion]) -> list[QuestionPair]:
    """Each article's first question paired with the next article's first question (the last with the first)."""
    firsts = list({q.title: q for q in questions[::-1]}.values())[::-1]  # each title's first question
    return [QuestionPair(q, firsts[(i + 1) % len(firsts)]) for i, q in enumerate(firsts)] if len(firsts) > 1 else []


@torch.no_grad()
def evaluate_pairs(hypernet: DocToLoRA, base: LoadedModel, pairs: list[QuestionPair] | None = None,
                   progress: bool = True) -> dict[str, dict[str, float]]:
    """Setting -> ``both`` (a reply contains an answer of each question), ``first``, ``second`` and ``n``.

    Raises:
        ValueError: there are fewer than two articles to pair.
    """
    pairs = question_pairs(handwritten_questions()) if pairs is None else pairs
    if not pairs:
        raise ValueError("two-chunk questions need questions about at least two articles")
    hypernet.eval()
    by_title = {a.title: a for a in load_articles("heldout")}
    articles = [by_title[t] for t in dict.fromkeys(q.title for p in pairs for q in (p.first, p.second))]
    position = {a.title: i for i, a in enumerate(articles)}
    coll = ProseCollection.build(hypernet, base, articles)
    hits: dict[str, list[tuple[bool, bool]]] = {}
    for pair in tqdm(pairs, desc="two-chunk", disable=not progress):
        one, two = position[pair.first.title], position[pair.second.title]
        ranked = coll.top(pair.prompt, 2)
        settings: dict[str, tuple[str, LoRAAdapter | None]] = {
            "closed-book": (pair.prompt, None),
            "in-context (both articles)": (
                in_context_prompt(articles[one].text + "\n\n" + articles[two].text, pair.prompt), None),
            "RAG (top-2 chunks in the prompt)": (
                in_context_prompt("\n\n".join(coll.chunk_texts[i] for i in ranked), pair.prompt), None),
            **{name: (pair.prompt, adapter) for name, adapter in
               routed_compositions(hypernet, coll, pair.prompt, 2, "internalized top-2").items()},
            "internalized, both articles' chunks": (
                pair.prompt, hypernet.compose([coll.adapters[i] for a in (one, two) for i in coll.of_article(a)])),
        }
        short = [n for n, (prompt, _) in settings.items() if prompt == pair.prompt]
        for group in [short] + [[n] for n in settings if n not in short]:  # equal prompts share a batch
            replies = greedy_answers(base, [settings[n][0] for n in group], [settings[n][1] for n in group],
                                     MAX_NEW_TOKENS)
            for name, reply in zip(group, replies, strict=True):
                hits.setdefault(name, []).append((contains(reply, pair.first.answers),
                                                  contains(reply, pair.second.answers)))
    n = len(pairs)
    return {name: {"both": sum(a and b for a, b in v) / n, "first": sum(a for a, _ in v) / n,
                   "second": sum(b for _, b in v) / n, "n": float(n)} for name, v in hits.items()}


def pairs_markdown(result: dict[str, dict[str, float]], hypernet_name: str) -> str:
    """The table of :func:`evaluate_pairs`."""
    n = next(iter(result.values()))["n"]
    lines = [f"### Questions that need two chunks (held-out, hand-written), hypernetwork: {hypernet_name}", "",
             f"{n:.0f} prompts, each two questions about two articles; *both*: the reply contains an answer to "
             f"each. Greedy, {MAX_NEW_TOKENS} new tokens.", "",
             "| setting | both | first question | second question |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {m['both']:.2f} | {m['first']:.2f} | {m['second']:.2f} |" for name, m in result.items()]
    return "\n".join(lines)
