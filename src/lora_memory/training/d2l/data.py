"""Synthetic training and evaluation documents, generated offline.

Three families, each with a train/held-out split so evaluation measures
generalisation, not memorisation:

- **needle**: a haystack of filler sentences with one needle ("The special magic
  number is 4821.") at any depth; values are numbers, codes, names or dates.
  Filler families and some needle phrasings are reserved for held-out data.
- **facts**: documents about fictional entities (people and companies), several facts each, with question-answer pairs. Entity,
  city and pet names are split by a hash; sentence templates are shared.
- any family at a length of many chunks (``min_tokens``/``max_tokens`` beyond the
  chunk length), so composed adapters are trained and evaluated together.

Every example is drawn from a ``random.Random`` the caller seeds, so a training
step's data is a pure function of (seed, step): exact resume needs no data state.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "heldout"]

NEEDLE_QUESTION = "What is the special magic number? Reply with only the number."


@dataclass
class QA:
    question: str
    answer: str


@dataclass
class Example:
    """A document and questions about it with their true answers."""

    document: str
    qa: list[QA]
    kind: str
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------- names
_SYL = ["ka", "zor", "vel", "mi", "tan", "ro", "quil", "bar", "eth", "lun", "dra", "po", "sif", "nex", "ula",
        "gri", "tho", "ves", "ari", "mon", "fen", "dal", "oss", "yra", "cor", "pim", "xan", "bel", "tur", "whe"]


def _split_of(name: str) -> Split:
    """A stable split by hash: about one name in five is held-out."""
    return "heldout" if zlib.crc32(name.encode()) % 5 == 0 else "train"


def _made_up(rng: random.Random, split: Split, syllables: tuple[int, int] = (2, 3)) -> str:
    while True:
        word = "".join(rng.choice(_SYL) for _ in range(rng.randint(*syllables))).capitalize()
        if _split_of(word) == split:
            return word


def person_name(rng: random.Random, split: Split) -> str:
    return f"{_made_up(rng, split)} {_made_up(rng, split)}"


# ---------------------------------------------------------------- needles
_FILLERS: dict[Split, list[list[str]]] = {
    "train": [
        ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."],
        ["Rivers flow to the sea.", "Birds sing in the morning.", "The wind moves the leaves.",
         "Clouds drift slowly.", "Stones rest on the path."],
        ["The market opens at dawn.", "Bread is sold by the baker.", "Children walk to school.",
         "The bus stops at the corner.", "Lamps glow in the evening."],
        ["Water boils when heated.", "Ice melts in the sun.", "Metal expands with heat.",
         "Light travels fast.", "Sound needs a medium."],
    ],
    "heldout": [
        ["The old clock ticks steadily.", "Dust gathers on the shelf.", "A cat sleeps by the window.",
         "Tea cools in the cup.", "Pages turn in the wind."],
        ["Mountains stand tall and quiet.", "Snow covers the high peaks.", "Valleys fill with fog.",
         "Trails wind between the pines.", "Eagles circle above."],
    ],
}

# (statement templates by split, question, value kind)
_NEEDLES = [
    ({"train": ["The special magic number is {v}.", "Remember: the special magic number is {v}."],
      "heldout": ["The special magic number is {v}.", "Note that the special magic number is {v}."]},
     NEEDLE_QUESTION, "number"),
    ({"train": ["The secret access code is {v}.", "Use the secret access code {v}."],
      "heldout": ["The secret access code is {v}."]},
     "What is the secret access code? Reply with only the code.", "code"),
    ({"train": ["The night guard is called {v}.", "The name of the night guard is {v}."],
      "heldout": ["The night guard is called {v}."]},
     "What is the name of the night guard? Reply with only the name.", "name"),
    ({"train": ["The harvest festival takes place on {v}.", "The harvest festival is held on {v}."],
      "heldout": ["The harvest festival takes place on {v}."]},
     "On what date does the harvest festival take place? Reply with only the date.", "date"),
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]


def _value(rng: random.Random, kind: str, split: Split) -> str:
    if kind == "number":
        return str(rng.randint(1000, 9999))
    if kind == "code":
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
        return f"{rng.choice(letters)}{rng.randint(0, 9)}{rng.choice(letters)}-{rng.randint(10, 99)}{rng.choice(letters)}"
    if kind == "name":
        return person_name(rng, split)
    return f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(2025, 2099)}"


def _filler(rng: random.Random, split: Split, n_chars: int) -> list[str]:
    family = rng.choice(_FILLERS[split])
    out, size = [], 0
    while size < n_chars:
        sentence = rng.choice(family)
        out.append(sentence)
        size += len(sentence) + 1
    return out


def needle_example(rng: random.Random, split: Split, min_tokens: int = 0, max_tokens: int = 0,
                   kinds: tuple[str, ...] = ("number",), depth: float | None = None) -> Example:
    """A haystack of about ``min_tokens``..``max_tokens`` tokens (0 = the needle alone) with one needle.

    Token counts are estimated at 4.2 characters per token (SmolLM2's tokenizer on this filler).
    """
    templates, question, kind = rng.choice([n for n in _NEEDLES if n[2] in kinds])
    value = _value(rng, kind, split)
    needle = rng.choice(templates[split]).format(v=value)
    n_tokens = rng.randint(min_tokens, max_tokens) if max_tokens else 0
    filler = _filler(rng, split, int(n_tokens * 4.2) - len(needle)) if n_tokens else []
    depth = rng.random() if depth is None else depth
    pos = round(depth * len(filler))
    document = " ".join(filler[:pos] + [needle] + filler[pos:])
    return Example(document, [QA(question, value)], "needle", {"depth": depth, "value_kind": kind})


# ------------------------------------------------------------------ facts
_CITIES_EXTRA = ["port", "ville", "holm", "stead", "mere", "gate"]
_PROFESSIONS = ["baker", "pilot", "architect", "chemist", "gardener", "librarian", "sculptor", "surgeon",
                "carpenter", "astronomer", "journalist", "violinist", "engineer", "tailor", "fisher"]
_COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "silver", "teal", "crimson", "amber"]
_ANIMALS = ["cat", "dog", "parrot", "turtle", "rabbit", "horse", "goat", "owl", "ferret", "lizard"]
_PRODUCTS = ["solar lamps", "bicycles", "tea kettles", "water filters", "telescopes", "umbrellas",
             "wooden toys", "drones", "garden tools", "hearing aids", "sailboats", "typewriters"]


def _city(rng: random.Random, split: Split) -> str:
    return _made_up(rng, split, (2, 2)) + rng.choice(_CITIES_EXTRA)


# each fact: attribute -> (value factory, train templates, held-out templates, question templates)
def _person(rng: random.Random, split: Split) -> tuple[str, list[tuple[str, str, list[str], list[str]]]]:
    name = person_name(rng, split)
    year, city = str(rng.randint(1900, 2005)), _city(rng, split)
    job, color = rng.choice(_PROFESSIONS), rng.choice(_COLORS)
    pet = _made_up(rng, split, (2, 2))
    facts = [
        ("birth_year", year, [f"{name} was born in {year}.", f"Born in {year}, {name} grew up quickly."],
         [f"What year was {name} born? Reply with only the year."]),
        ("city", city, [f"{name} lives in the city of {city}.", f"{name} has a home in {city}."],
         [f"In which city does {name} live? Reply with only the city."]),
        ("job", job, [f"{name} works as a {job}.", f"By profession, {name} is a {job}."],
         [f"What is {name}'s profession? Reply with only the profession."]),
        ("color", color, [f"The favourite colour of {name} is {color}.", f"{name} loves the colour {color}."],
         [f"What is {name}'s favourite colour? Reply with only the colour."]),
        ("pet", pet, [f"{name} owns a {rng.choice(_ANIMALS)} named {pet}.", f"{name}'s pet is called {pet}."],
         [f"What is the name of {name}'s pet? Reply with only the name."]),
    ]
    return name, facts


def _company(rng: random.Random, split: Split) -> tuple[str, list[tuple[str, str, list[str], list[str]]]]:
    name = _made_up(rng, split) + rng.choice([" Industries", " Labs", " and Sons", " Works", " Corporation"])
    year, founder = str(rng.randint(1850, 2020)), person_name(rng, split)
    city, product, staff = _city(rng, split), rng.choice(_PRODUCTS), str(rng.randint(12, 9000))
    facts = [
        ("founded", year, [f"{name} was founded in {year}.", f"Since its founding in {year}, {name} has grown."],
         [f"In what year was {name} founded? Reply with only the year."]),
        ("founder", founder, [f"{name} was started by {founder}.", f"The founder of {name} is {founder}."],
         [f"Who founded {name}? Reply with only the name."]),
        ("hq", city, [f"{name} has its headquarters in {city}.", f"The head office of {name} is in {city}."],
         [f"Where is {name} headquartered? Reply with only the city."]),
        ("product", product, [f"{name} makes {product}.", f"The main product of {name} is {product}."],
         [f"What does {name} make? Reply with only the product."]),
        ("staff", staff, [f"{name} employs {staff} people.", f"There are {staff} employees at {name}."],
         [f"How many people does {name} employ? Reply with only the number."]),
    ]
    return name, facts


_ENTITIES = {"person": _person, "company": _company}


def facts_example(rng: random.Random, split: Split, n_facts: tuple[int, int] = (3, 5),
                  entity_kinds: tuple[str, ...] = ("person", "company"), questions: int = 0) -> Example:
    """A short document about one fictional entity with ``n_facts`` facts and their questions.

    Held-out documents use held-out names (never seen in training); both splits draw
    from the same sentence templates.
    """
    kind = rng.choice(entity_kinds)
    name, facts = _ENTITIES[kind](rng, split)
    chosen = rng.sample(facts, rng.randint(*n_facts))
    sentences, qa = [], []
    for _attr, value, templates, questions_ in chosen:
        sentences.append(rng.choice(templates))
        qa.append(QA(rng.choice(questions_), value))
    document = " ".join(sentences)
    if questions:
        qa = rng.sample(qa, min(questions, len(qa)))
    return Example(document, qa, "facts", {"entity": name, "entity_kind": kind})


def make_example(rng: random.Random, kind: str, split: Split, **params: Any) -> Example:
    """Dispatch by family name: ``needle``, ``facts`` or ``prose`` (real text, see ``training.d2l.prose``)."""
    if kind == "needle":
        return needle_example(rng, split, **params)
    if kind == "facts":
        return facts_example(rng, split, **params)
    if kind == "prose":
        from .prose import prose_example  # the corpus is an optional install

        return prose_example(rng, split, **params)
    raise ValueError(f"unknown task kind {kind!r}; expected 'needle', 'facts' or 'prose'")
