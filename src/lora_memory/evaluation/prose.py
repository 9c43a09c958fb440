"""Held-out evaluation on real prose (``lora-memory eval --prose``).

The documents are held-out Wikipedia summaries (``training.d2l.prose``: never trained
on, not even as distractors). Two question sets:

- **hand-written**: questions written by another author from the texts alone,
  phrased differently from the sentences, each with a list of accepted answers
  (``prose_questions.json`` beside this module);
- **rule-made**: the training generator's own question types (cloze, capital,
  population, located, founded) on held-out articles. These share the training
  data's shape, so they say less about users' documents; they are reported apart.

All the set's articles form one collection; each article is chunked as the
memory chunks it. Every question is answered, by greedy generation, in these
settings: closed-book; in-context (its article in the prompt); RAG (the BM25
top-2 chunks of the whole collection in the prompt, the same base model);
internalized with the BM25 top-k chunk adapters composed (k = 1, 2, 4, as
``LoRAMemory`` routes); internalized with its own article's chunks (routing
errors removed); and internalized with every chunk of a 4-article group
(the article and three others) concatenated. The lift of a setting is
``(setting - closed_book) / (in_context - closed_book)`` on ``contains``.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..adapter import LoRAAdapter
from ..base import LoadedModel
from ..chunking import chunk_text
from ..config import DEFAULT_MIN_RELEVANCE
from ..hypernet import DocToLoRA, HypernetConfig
from ..routing import BM25Index
from ..training.d2l.baseline import distill_document
from ..training.d2l.batching import qa_batch
from ..training.d2l.data import QA, Example
from ..training.d2l.prose import (
    AnswerForm,
    Article,
    article_questions,
    as_sentence_answers,
    cloze_questions,
    continuations,
    load_articles,
    sentences,
    written_articles,
    written_questions,
)
from ..training.objectives import answer_loss
from .answering import greedy_answer, greedy_answers
from .prompts import in_context_prompt
from .scoring import contains, exact_match

QUESTIONS_FILE = Path(__file__).with_name("prose_questions.json")
CAPACITY_QUESTIONS_FILE = Path(__file__).with_name("prose_capacity_questions.json")
RULE_TYPES = ("cloze", "capital", "population", "located", "founded")
GROUP_SIZE = 4
RAG_TOP_K = 2


@dataclass
class ProseQuestion:
    """A question about one held-out article, with its accepted answers."""

    title: str
    question: str
    answers: list[str]
    type: str


def lift(score: float, closed_book: float, in_context: float) -> float:
    """How much of the document's in-context help a setting recovers: (score - closed-book) / (in-context -
    closed-book); NaN where the document does not help in context.
    """
    return (score - closed_book) / (in_context - closed_book) if in_context > closed_book else float("nan")


def handwritten_questions(path: Path = QUESTIONS_FILE) -> list[ProseQuestion]:
    """The hand-written set: every title is checked to be in the held-out split."""
    data = json.loads(path.read_text(encoding="utf-8"))
    held = {a.title for a in load_articles("heldout")}
    out = []
    for item in data["articles"]:
        if item["title"] not in held:
            raise ValueError(f"{path}: {item['title']!r} is not in the held-out split")
        out += [ProseQuestion(item["title"], q["question"], list(q["answers"]), q["type"]) for q in item["questions"]]
    return out


def rule_questions(n_articles: int, seed: int = 7) -> list[ProseQuestion]:
    """Up to two rule-made questions (span answers only) for each of ``n_articles`` held-out articles."""
    rng = random.Random(seed)
    articles = list(load_articles("heldout"))
    rng.shuffle(articles)
    out: list[ProseQuestion] = []
    for article in articles:
        made = {k: qa for k, qa in article_questions(rng, article).items() if k in RULE_TYPES}
        if not made:
            continue
        for kind in rng.sample(sorted(made), min(2, len(made))):
            out.append(ProseQuestion(article.title, made[kind].question, [made[kind].answer], kind))
        if len({q.title for q in out}) >= n_articles:
            break
    return out


@dataclass
class ProseCollection:
    """The set's articles as one collection: chunks, their adapters, their owners and a BM25 index."""

    articles: list[Article]
    chunk_texts: list[str]
    owner: list[int]  # article index of each chunk
    adapters: list[LoRAAdapter]
    index: BM25Index

    @classmethod
    @torch.no_grad()
    def build(cls, hypernet: DocToLoRA, base: LoadedModel, articles: list[Article]) -> ProseCollection:
        chunks, owner = [], []
        for i, article in enumerate(articles):
            for c in chunk_text(base.tokenizer, article.text, hypernet.config.max_chunk_tokens):
                chunks.append(c)
                owner.append(i)
        adapters = hypernet.adapters_for_chunks(base, chunks, progress=True)
        texts = [c.text for c in chunks]
        return cls(articles, texts, owner, adapters, BM25Index(texts))

    def top(self, question: str, k: int) -> list[int]:
        return [i for i, _ in self.index.top_k(question, k)]

    def of_article(self, article: int) -> list[int]:
        return [i for i, o in enumerate(self.owner) if o == article]


@dataclass
class ProseReport:
    """Per question set: setting -> scores; plus routing accuracy and the question counts by type."""

    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    by_type: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    routing: dict[str, float] = field(default_factory=dict)

    def to_markdown(self, hypernet_name: str) -> str:
        lines = [f"## Real prose (held-out Wikipedia summaries), hypernetwork: {hypernet_name}", "",
                 "Greedy decoding. *contains*: an accepted answer occurs in the reply as whole words; *exact*: the "
                 "reply is an accepted answer. *Lift*: (setting - closed-book) / (in-context - closed-book), on "
                 "contains. *Chunks applied*: the mean number of chunk adapters composed per question (a routed "
                 "setting drops the chunks below the default `min_relevance`). "
                 f"RAG: the BM25 top-{RAG_TOP_K} chunks of the whole collection in the prompt. "
                 f"*All chunks*: every chunk of a {GROUP_SIZE}-article group concatenated.", ""]
        for name, settings in self.results.items():
            n = next(iter(settings.values()))["n"]
            lines += [f"### {name} ({n:.0f} questions, routing picks the right article "
                      f"{self.routing.get(name, 0.0):.2f} at top-1)", "",
                      "| setting | contains | exact | lift | chunks applied |", "|---|---:|---:|---:|---:|"]
            cb, ic = settings["closed-book"]["contains"], settings["in-context"]["contains"]
            for setting, m in settings.items():
                chunks = f"{m['chunks']:.2f}" if m.get("chunks") else "-"
                lines.append(f"| {setting} | {m['contains']:.2f} | {m['exact']:.2f} | {lift(m['contains'], cb, ic):.2f} "
                             f"| {chunks} |")
            types = self.by_type.get(name, {})
            if types:
                cols = ["closed-book", "in-context", "internalized top-1"]
                lines += ["", "By question type (contains):", "", "| type | n | " + " | ".join(cols) + " |",
                          "|---|---:|" + "---:|" * len(cols)]
                for t, m in sorted(types.items()):
                    lines.append(f"| {t} | {m['n']:.0f} | " + " | ".join(f"{m[c]:.2f}" for c in cols) + " |")
            lines.append("")
        return "\n".join(lines)


def as_memory_applies(hypernet: DocToLoRA, coll: ProseCollection, question: str, k: int) -> LoRAAdapter | None:
    """What ``LoRAMemory(top_k=k)`` applies to ``question``: the routed chunks whose relevance reaches the default
    ``min_relevance``, composed with their relevance (:meth:`DocToLoRA.compose`); None (closed-book) when none does.
    """
    found, _ = coll.index.route(question, k, DEFAULT_MIN_RELEVANCE)
    if not found:
        return None
    return hypernet.compose([coll.adapters[i] for i, _, _ in found], relevance=[r for _, _, r in found])


def routed_compositions(hypernet: DocToLoRA, coll: ProseCollection, question: str, k: int,
                        name: str) -> dict[str, LoRAAdapter | None]:
    """Setting name -> adapter for ``question``'s top-``k`` routed chunks. ``name`` is what
    ``LoRAMemory(top_k=k)`` applies (:func:`as_memory_applies`). For k > 1 and a
    reader with a companion, two more settings show what each step does: ``"<name>, every chunk, unweighted"``
    (no threshold, no weights, the learned part of the best chunk only) and ``"<name>, both parts of all k"``
    (the runtime's composition before the fourteenth attempt).
    """
    out = {name: as_memory_applies(hypernet, coll, question, k)}
    if k > 1 and hypernet.companion is not None:
        every = [coll.adapters[i] for i in coll.top(question, k)]
        out[f"{name}, every chunk, unweighted"] = hypernet.compose(every, relevance=[1.0] * k)
        out[f"{name}, both parts of all {k}"] = hypernet.compose(every)
    return out


@torch.no_grad()
def evaluate_questions(hypernet: DocToLoRA, base: LoadedModel, questions: list[ProseQuestion],
                       top_ks: tuple[int, ...] = (1, 2, 4), max_new_tokens: int = 24, progress: bool = True
                       ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], float, list[dict]]:
    """Scores per setting, contains per question type, top-1 routing accuracy, and every reply."""
    hypernet.eval()
    by_title = {a.title: a for a in load_articles("heldout")}
    articles = [by_title[t] for t in dict.fromkeys(q.title for q in questions)]
    position = {a.title: i for i, a in enumerate(articles)}
    coll = ProseCollection.build(hypernet, base, articles)
    hits: dict[str, list[tuple[bool, bool]]] = {}
    applied: dict[str, list[int]] = {}  # chunks in each question's adapter
    typed: dict[str, dict[str, list[bool]]] = {}
    routed_right, replies = 0, []
    for q in tqdm(questions, desc="prose", disable=not progress):
        art = position[q.title]
        ranked = coll.top(q.question, max(max(top_ks), RAG_TOP_K))
        routed_right += coll.owner[ranked[0]] == art
        group = [(art + j) % len(articles) for j in range(min(GROUP_SIZE, len(articles)))]
        settings: dict[str, tuple[str, LoRAAdapter | None]] = {
            "closed-book": (q.question, None),
            "in-context": (in_context_prompt(articles[art].text, q.question), None),
            f"RAG (top-{RAG_TOP_K} chunks in the prompt)": (
                in_context_prompt("\n\n".join(coll.chunk_texts[i] for i in ranked[:RAG_TOP_K]), q.question), None),
        }
        for k in top_ks:
            routed = routed_compositions(hypernet, coll, q.question, k, f"internalized top-{k}")
            settings.update({name: (q.question, adapter) for name, adapter in routed.items()})
        settings["internalized, own article"] = (
            q.question, hypernet.compose([coll.adapters[i] for i in coll.of_article(art)]))
        settings[f"internalized, all chunks of {len(group)} articles"] = (
            q.question, hypernet.compose([coll.adapters[i] for g in group for i in coll.of_article(g)]))
        reply_row = {"title": q.title, "question": q.question, "answers": q.answers, "type": q.type}
        names = list(settings)
        # rows share a batch only when their prompts are identical: left padding changes bf16 greedy decodes
        # (the in-context baseline moved from 0.46 to 0.51 contains when its rows were padded together)
        short = [n for n in names if settings[n][0] == q.question]
        for same_length in [short] + [[n] for n in names if n not in short]:
            answers = greedy_answers(base, [settings[n][0] for n in same_length], [settings[n][1] for n in same_length],
                                   max_new_tokens)
            reply_row.update(zip(same_length, answers))
        for name in names:
            reply = reply_row[name]
            ok = (contains(reply, q.answers), exact_match(reply, q.answers))
            hits.setdefault(name, []).append(ok)
            adapter = settings[name][1]
            applied.setdefault(name, []).append(0 if adapter is None else int(adapter.metadata.get("n_chunks", 1)))
            typed.setdefault(q.type, {}).setdefault(name, []).append(ok[0])
        replies.append(reply_row)
    n = len(questions)
    scores = {name: {"contains": sum(c for c, _ in v) / n, "exact": sum(e for _, e in v) / n, "n": float(n),
                     "chunks": sum(applied[name]) / n} for name, v in hits.items()}
    types = {t: {**{name: sum(v) / len(v) for name, v in s.items()}, "n": float(len(next(iter(s.values()))))}
             for t, s in typed.items()}
    return scores, types, routed_right / n, replies


def evaluate_prose(hypernet: DocToLoRA, base: LoadedModel, quick: bool = False, rule_articles: int = 40,
                   replies_path: Path | None = None, progress: bool = True) -> ProseReport:
    """Both question sets (``quick``: the first 10 hand-written articles and 10 rule-made ones)."""
    hand = handwritten_questions()
    if quick:
        keep = list(dict.fromkeys(q.title for q in hand))[:10]
        hand = [q for q in hand if q.title in keep]
    sets = {"hand-written questions": hand,
            "rule-made questions (the training generator's shape)": rule_questions(10 if quick else rule_articles)}
    report = ProseReport()
    all_replies = {}
    for name, questions in sets.items():
        scores, types, routing, replies = evaluate_questions(hypernet, base, questions, progress=progress)
        report.results[name], report.by_type[name], report.routing[name] = scores, types, routing
        all_replies[name] = replies
    if replies_path is not None:
        replies_path.parent.mkdir(parents=True, exist_ok=True)
        replies_path.write_text(json.dumps(all_replies, indent=1, ensure_ascii=False) + "\n")
    return report


@torch.no_grad()
def evaluate_written_validation(hypernet: DocToLoRA, base: LoadedModel, articles: int = 60, max_new_tokens: int = 24,
                                answers: AnswerForm = "span", progress: bool = True) -> dict[str, float]:
    """Checkpoint selection without the test set: the written questions' validation part (training-split articles
    that training never sees, :func:`~lora_memory.training.d2l.prose.written_part`), the first wording of every
    fact, answered closed-book, with the article in the prompt, and with its own article's adapter (chunked as
    the memory chunks it).

    Beside greedy contains it reports the teacher-forced answer loss (nats per answer token, averaged per question)
    with the own article's adapter, with the *next* article's adapter, and closed-book, on ``answers``-form
    targets (``sentence``: the article's sentence through the answer, as a hypernetwork trained with
    ``answers="sentence"`` replies). The gap between the other and the own article's loss is what the adapter
    carries about its own text; the gap between closed-book and the other article's loss is what any adapter of
    this hypernetwork does whatever it read (answer format, priors).

    Returns contains with the adapter, in context and closed-book, the three losses, the number of questions and
    of articles, the new-token budget and the answer form.
    """
    hypernet.eval()
    valid = written_questions("valid")
    chosen = list(written_articles("valid")[:articles])
    coll = ProseCollection.build(hypernet, base, chosen)
    adapters = [hypernet.compose([coll.adapters[j] for j in coll.of_article(i)]) for i in range(len(chosen))]
    scores: dict[str, list[bool]] = {"internalized": [], "in_context": [], "closed_book": []}
    losses: dict[str, list[float]] = {"own": [], "other": [], "closed": []}
    for i, article in enumerate(tqdm(chosen, desc="validation", disable=not progress)):
        questions = [wordings[0] for wordings in valid[article.title]]
        for qa in questions:
            with_adapter, bare = greedy_answers(base, [qa.question, qa.question], [adapters[i], None], max_new_tokens)
            read = greedy_answer(base, in_context_prompt(article.text, qa.question), None, max_new_tokens)
            for setting, reply in zip(scores, (with_adapter, read, bare)):
                scores[setting].append(contains(reply, [qa.answer]))
        targets = as_sentence_answers(article.text, questions) if answers == "sentence" else questions
        batch = qa_batch(base.tokenizer, [Example(article.text, targets, "prose")])
        settings = {"own": adapters[i], "other": adapters[(i + 1) % len(chosen)], "closed": None}
        for setting, adapter in settings.items():
            loss = answer_loss(base.model, batch, adapter.as_batch() if adapter is not None else None).loss
            losses[setting] += [loss.item()] * len(questions)
    n = len(scores["internalized"])
    return {**{setting: sum(values) / n for setting, values in scores.items()},
            **{f"loss_{setting}": sum(values) / n for setting, values in losses.items()},
            "n": float(n), "articles": float(len(chosen)), "max_new_tokens": float(max_new_tokens),
            "sentence_answers": float(answers == "sentence")}


def validation_markdown(result: dict[str, float], hypernet_name: str) -> str:
    """One line per setting of :func:`evaluate_written_validation`."""
    form = "the article's sentence through the answer" if result.get("sentence_answers") else "the short answer"
    return "\n".join([
        f"### Written validation questions, hypernetwork: {hypernet_name}", "",
        "| setting | contains | answer loss (teacher-forced) |", "|---|---:|---:|",
        f"| closed-book | {result['closed_book']:.2f} | {result['loss_closed']:.2f} |",
        f"| in context | {result['in_context']:.2f} | - |",
        f"| internalized, another article's adapter | - | {result['loss_other']:.2f} |",
        f"| internalized, own article | {result['internalized']:.2f} | {result['loss_own']:.2f} |", "",
        f"{result['n']:.0f} questions (the first wording of each fact) on {result['articles']:.0f} training-split "
        f"articles of the validation part, never trained on; greedy, {result['max_new_tokens']:.0f} new tokens. "
        f"Answer loss: nats per answer token of {form}, averaged per question. What the adapter carries about "
        f"its own article: {result['loss_other'] - result['loss_own']:.2f} nats (another article's loss minus the "
        f"own one's). Lift (internalized - closed-book) / (in context - closed-book): "
        f"{lift(result['internalized'], result['closed_book'], result['in_context']):.2f}."])


CapacityVariant = Literal["rules", "everything", "written"]
LOW_OVERLAP = 0.5  # a hand-written question sharing less than this with every training question is "reworded"
CAPACITY_VARIANTS: dict[str, str] = {
    "rules": "rule-made questions",
    "everything": "+ every cloze and sentence continuation",
    "written": "written questions (another author, other wording)",
}


def written_capacity_questions(path: Path = CAPACITY_QUESTIONS_FILE) -> dict[str, list[QA]]:
    """Title -> the capacity rung's written training questions (both wordings of every fact), without any
    question identical to a hand-written evaluation question (case and punctuation aside).
    """
    asked = {_normalized(q.question) for q in handwritten_questions()}
    raw = json.loads(path.read_text(encoding="utf-8"))["articles"]
    return {item["title"]: [QA(q, fact["answers"][0]) for fact in item["facts"] for q in fact["questions"]
                            if _normalized(q) not in asked] for item in raw}


def word_overlap(a: str, b: str) -> float:
    """Shared words over all words of two questions (Jaccard on case-folded word sets)."""
    x, y = (set(re.findall(r"\w+", q.casefold())) for q in (a, b))
    return len(x & y) / max(1, len(x | y))


def _normalized(question: str) -> str:
    return " ".join(re.findall(r"\w+", question.casefold()))


def capacity_example(article: Article, variant: CapacityVariant = "rules", draws: int = 4) -> Example:
    """The free LoRA's training set for one article.

    ``rules``: every rule-made question type in ``draws`` phrasings; ``everything``: also every cloze and every
    sentence's continuation (the whole text, reconstructed); ``written``: the written capacity questions
    (:func:`written_capacity_questions`).
    """
    if variant == "written":
        return Example(article.text, written_capacity_questions()[article.title], "prose", {"title": article.title})
    qa = {}
    for seed in range(draws):
        for made in article_questions(random.Random(seed), article).values():
            qa[made.question] = made
    if variant == "everything":
        rng, sents = random.Random(0), sentences(article.text)
        for made in cloze_questions(rng, article.title, sents) + continuations(rng, article.title, sents):
            qa[made.question] = made
    return Example(article.text, list(qa.values()), "prose", {"title": article.title})


def evaluate_prose_capacity(base: LoadedModel, config: HypernetConfig, articles: int = 8, steps: int = 30,
                            max_new_tokens: int = 24, variant: CapacityVariant = "rules") -> dict[str, float]:
    """Rung 1 on prose: a free LoRA of the adapter's shape, trained on one article's questions of ``variant``,
    answers that article's hand-written questions (never trained on)?

    Returns contains on the hand-written questions with the trained LoRA and closed-book, the same on the
    hand-written questions whose closest training question shares less than ``LOW_OVERLAP`` of its words
    (:func:`word_overlap`; worded differently, not just other punctuation), the mean of that closest overlap,
    the share of its own training questions it answers, and the seconds per Adam step.
    """
    hand = handwritten_questions()
    by_title = {a.title: a for a in load_articles("heldout")}
    titles = list(dict.fromkeys(q.title for q in hand))[:articles]
    with_lora, closed, trained, seconds, overlaps = [], [], [], [], []
    for i, title in enumerate(titles):
        ex = capacity_example(by_title[title], variant)
        with torch.enable_grad():
            result = distill_document(base, ex, config, steps=steps, lr=1e-2, seed=i)
        seconds.append(result.seconds_per_step)
        for q in (q for q in hand if q.title == title):
            with_lora.append(contains(greedy_answer(base, q.question, result.adapter, max_new_tokens), q.answers))
            closed.append(contains(greedy_answer(base, q.question, None, max_new_tokens), q.answers))
            overlaps.append(max(word_overlap(q.question, qa.question) for qa in ex.qa))
        trained += [contains(greedy_answer(base, qa.question, result.adapter, max_new_tokens), [qa.answer])
                    for qa in ex.qa]
    low = [ok for ok, overlap in zip(with_lora, overlaps, strict=True) if overlap < LOW_OVERLAP]
    low_closed = [ok for ok, overlap in zip(closed, overlaps, strict=True) if overlap < LOW_OVERLAP]
    return {"hand_written_lora": sum(with_lora) / len(with_lora), "hand_written_closed": sum(closed) / len(closed),
            "low_overlap_lora": sum(low) / max(1, len(low)), "low_overlap_closed": sum(low_closed) / max(1, len(low)),
            "n_low_overlap": float(len(low)), "overlap": sum(overlaps) / len(overlaps),
            "trained_questions": sum(trained) / len(trained), "n": float(len(with_lora)),
            "n_trained": float(len(trained)), "steps": float(steps), "seconds_per_step": sum(seconds) / len(seconds)}


def capacity_markdown(results: dict[str, dict[str, float]], shape: HypernetConfig) -> str:
    """The capacity rung's runs, one row per training-question variant (keys of :data:`CAPACITY_VARIANTS`)."""
    first = next(iter(results.values()))
    layers = shape.layers
    where = f"layers {layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else f"layers {layers}"
    lines = [f"### Capacity on prose (a free rank-{shape.rank} LoRA on `{shape.target_module}` of {where}, "
             f"{first['steps']:.0f} Adam steps per article)", "",
             "| trained on | its own training questions | hand-written questions | closed-book | word overlap "
             f"| reworded (overlap < {LOW_OVERLAP}): LoRA / closed-book (n) |",
             "|---|---:|---:|---:|---:|---:|"]
    for variant, cap in results.items():
        lines.append(f"| {CAPACITY_VARIANTS[variant]} ({cap['n_trained']:.0f}) | {cap['trained_questions']:.2f} | "
                     f"{cap['hand_written_lora']:.2f} | {cap['hand_written_closed']:.2f} | {cap['overlap']:.2f} | "
                     f"{cap['low_overlap_lora']:.2f} / {cap['low_overlap_closed']:.2f} ({cap['n_low_overlap']:.0f}) |")
    lines += ["", f"{first['n']:.0f} hand-written questions on {first['n'] / 2:.0f} held-out articles; contains; "
              f"{first['seconds_per_step']:.2f} s per step. Word overlap: the mean, over the hand-written questions, "
              "of the Jaccard overlap of its words with the closest training question (written questions ask about "
              "the same salient facts and often in similar words; the reworded column keeps the ones that do not)."]
    return "\n".join(lines)
