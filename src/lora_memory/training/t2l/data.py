"""The Text-to-LoRA multi-task set: generated tasks, their descriptions, checkers and SFT batches.

Every task has several differently worded descriptions and an unlimited
stream of generated (input, output) examples. Tasks are split *by task* into
training and held-out ones; a held-out task is never seen in training, under
any wording. Training tasks keep their last description back, to measure
unseen wordings of seen tasks. Most held-out tasks are siblings of training
tasks (singular vs plural, minus vs plus, product vs movie reviews), so a
description embedding can place them; none is a rewording of a training task.

The model sees the example input alone (no description in the prompt) as a
user chat turn; the loss is on the answer tokens and the end-of-turn token
(the D2L trainer's :func:`~lora_memory.training.batching.student_batch`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from transformers import PreTrainedTokenizerBase

from ..batching import StudentBatch, answer_ids, student_batch
from . import tasks as g


@dataclass(frozen=True)
class Task:
    """A generated task: its descriptions, an example generator and how answers are checked."""

    name: str
    descriptions: tuple[str, ...]
    make: Callable[[random.Random], tuple[str, str]]
    held_out: bool = False
    check: str = "exact"  # exact | label (case and final punctuation ignored) | json (parsed equality)

    def examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        """``n`` (input, output) pairs, the same for the same seed."""
        rng = random.Random(f"{self.name}:{seed}")
        return [self.make(rng) for _ in range(n)]

    @property
    def train_descriptions(self) -> tuple[str, ...]:
        """Wordings used in training (all but the last), none for held-out tasks."""
        return () if self.held_out else self.descriptions[:-1]

    @property
    def eval_descriptions(self) -> tuple[str, ...]:
        """Wordings never seen in training: all of a held-out task's, the last of a training task's."""
        return self.descriptions if self.held_out else self.descriptions[-1:]

    def correct(self, prediction: str, answer: str) -> bool:
        """Whether ``prediction`` is right under this task's checker."""
        pred = prediction.strip()
        if self.check == "json":
            try:
                return json.loads(pred) == json.loads(answer)
            except json.JSONDecodeError:
                return False
        if self.check == "label":
            return pred.lower().rstrip(".!") == answer.lower()
        return pred == answer


def _t(name: str, make: Callable, *descriptions: str, held_out: bool = False, check: str = "exact") -> Task:
    return Task(name, descriptions, make, held_out, check)


TASKS: list[Task] = [
    _t("uppercase", partial(g.change_case, "upper"), "Rewrite the text in all capital letters.",
       "Convert the sentence to uppercase.", "Repeat the input, but with every letter capitalized.",
       "Shout it: output the same words in upper case.", "Return the text in CAPS.",
       "Make every character of the sentence an uppercase letter."),
    _t("title_case", partial(g.change_case, "title"), "Capitalize the first letter of every word.",
       "Convert the sentence to title case.", "Rewrite the text so each word starts with a capital letter.",
       "Return the words with their initials in upper case.", "Format the input as a title.",
       "Give each word of the sentence a leading capital."),
    _t("lowercase", partial(g.change_case, "lower"), "Rewrite the text in all lowercase letters.",
       "Convert the sentence to lower case.", "Return the input with no capital letters at all.",
       "Make every letter small.", "Output the same words, lowercased.", held_out=True),
    _t("reverse_words", g.reverse_words,
       "Reverse the order of the words.", "Write the words of the sentence backwards, last word first.",
       "Output the same words in reverse order.", "Flip the word order of the input.",
       "Read the sentence from the end: list its words from last to first.",
       "Return the words in the opposite order."),
    _t("first_word", partial(g.word_pick, 0), "Return only the first word.", "What is the first word of the text?",
       "Output the opening word of the sentence.", "Give me just the word the sentence starts with.",
       "Answer with the initial word only.", "Reply with the first word and nothing else."),
    _t("last_word", partial(g.word_pick, -1), "Return only the last word.", "What is the final word of the text?",
       "Output the closing word of the sentence.", "Give me just the word the sentence ends with.",
       "Answer with the final word only.", "Reply with the last word and nothing else."),
    _t("second_word", partial(g.word_pick, 1), "Return only the second word.",
       "What is the second word of the text?", "Output the word that comes right after the first one.",
       "Answer with word number two of the sentence.", "Reply with the second word and nothing else.",
       "Give me just the word in second position."),
    _t("count_words", g.count_words,
       "Count the words in the text and answer with a number.", "How many words are there?",
       "Reply with the number of words in the sentence.", "Give the word count as digits.",
       "Answer with how many words the input has.", "Tell me the number of words, as a numeral."),
    _t("pluralise", partial(g.pick, g.PLURALS), "Give the plural form of the noun.",
       "Pluralise the word.", "What is the plural of this word?", "Turn the noun into its plural.",
       "Write the word for more than one of these.", "Answer with the plural of the given noun."),
    _t("singularise", partial(g.pick, g.PLURALS, invert=True), "Give the singular form of the noun.",
       "Singularise the word.", "What is the singular of this plural word?", "Turn the plural noun into its singular.",
       "Write the word for just one of these.", held_out=True),
    _t("words_to_digits", partial(g.spelled_number, False),
       "Write the number in digits.", "Convert the number word to a numeral.",
       "Turn the spelled-out number into digits.", "Answer with the number written as figures.",
       "What number is this? Reply with digits.", "Translate the English number name into a numeral."),
    _t("digits_to_words", partial(g.spelled_number, True),
       "Write the number in words.", "Spell out the number in English.", "Convert the numeral to its English name.",
       "Answer with the number written as words.", held_out=True),
    _t("add", partial(g.arithmetic, "plus"), "Add the two numbers and answer with digits.",
       "Compute the sum.", "What is the total? Reply with a number.", "Do the addition and give the result.",
       "Work out the sum of the numbers written in words.", "Solve the addition; answer as a numeral."),
    _t("multiply", partial(g.arithmetic, "times"), "Multiply the two numbers and answer with digits.",
       "Compute the product.", "What is the result of the multiplication? Reply with a number.",
       "Do the multiplication and give the result.", "Work out the product of the numbers written in words.",
       "Solve the multiplication; answer as a numeral."),
    _t("subtract", partial(g.arithmetic, "minus"), "Subtract the second number from the first and answer with digits.",
       "Compute the difference.", "What is the result of the subtraction? Reply with a number.",
       "Do the subtraction and give the result.", held_out=True),
    _t("next_number", partial(g.neighbour, 1), "Give the next number.", "What number comes after this one?",
       "Add one to the number.", "Answer with the number that follows.", "Count up by one from the input.",
       "Reply with the successor of the number."),
    _t("previous_number", partial(g.neighbour, -1), "Give the previous number.",
       "What number comes before this one?", "Subtract one from the number.",
       "Answer with the number that precedes it.", held_out=True),
    _t("larger_number", partial(g.compare, True), "Which number is larger? Answer with it.",
       "Return the bigger of the two numbers.", "Pick the maximum.", "Answer with the greater number.",
       "Choose the highest value of the two.", "Reply with whichever number is larger."),
    _t("smaller_number", partial(g.compare, False), "Which number is smaller? Answer with it.",
       "Return the lesser of the two numbers.", "Pick the minimum.", "Answer with the lower number.",
       held_out=True),
    _t("movie_sentiment", partial(g.sentiment, g.MOVIE_TEMPLATES, ("positive", "negative")),
       "Classify the sentiment of the movie review as positive or negative.",
       "Is this film review positive or negative?", "Label the review: positive or negative.",
       "Decide whether the opinion about the movie is positive or negative.",
       "Sentiment analysis of a film comment: answer positive or negative.",
       "Tell me if the reviewer liked the movie: positive or negative.", check="label"),
    _t("product_sentiment", partial(g.sentiment, g.PRODUCT_TEMPLATES, ("positive", "negative")),
       "Classify the sentiment of the product review as positive or negative.",
       "Is this customer review positive or negative?", "Decide if the buyer is happy: positive or negative.",
       "Label the shopping review with its sentiment, positive or negative.", held_out=True, check="label"),
    _t("json_person", g.json_person, "Extract the name and age as JSON.",
       "Return a JSON object with the keys name and age.", "Convert the sentence to JSON: name and age.",
       "Output the person's name and age as a JSON object.", "Give structured JSON with fields name and age.",
       "Parse the sentence into JSON containing name and age.", check="json"),
    _t("json_city", g.json_city, "Extract the city and country as JSON.",
       "Return a JSON object with the keys city and country.", "Convert the sentence to JSON: city and country.",
       "Output the city and its country as a JSON object.", held_out=True, check="json"),
    _t("extract_year", partial(g.from_template, g.YEAR_TEMPLATES, "y", list(range(1900, 2025))),
       "Extract the year from the sentence.", "Which year is mentioned?", "Answer with the year only.",
       "Pull out the year in the text.", "Return the four-digit year that appears in the input.",
       "Find the year in the sentence and reply with it."),
    _t("extract_name", partial(g.from_template, g.NAME_TEMPLATES, "p", g.NAMES),
       "Extract the person's name from the sentence.", "Who is mentioned? Answer with the name.",
       "Answer with the name only.", "Pull out the name of the person in the text.",
       "Return the first name that appears in the input.", "Find the person in the sentence and reply with the name."),
    _t("extract_number", partial(g.from_template, g.AMOUNT_TEMPLATES, "n", list(range(2, 99))),
       "Extract the number from the sentence.", "Which quantity is mentioned?", "Answer with the number only.",
       "Pull out the count in the text.", held_out=True),
    _t("capital_of", partial(g.pick, g.CAPITALS), "Name the capital city of the country.",
       "What is the capital of this country?", "Answer with the country's capital.",
       "Give the capital city.", "Which city is the capital? Reply with its name.",
       "Reply with the seat of government of the given nation."),
    _t("country_of_capital", partial(g.pick, g.CAPITALS, invert=True), "Name the country whose capital this is.",
       "Which country has this city as its capital?", "Answer with the country of the capital city.",
       "Give the nation this capital belongs to.", held_out=True),
    _t("to_french", partial(g.pick, g.FRENCH), "Translate the word into French.", "What is this in French?",
       "Give the French translation.", "Say it in French.", "Answer with the French equivalent.",
       "Translate from English to French."),
    _t("to_spanish", partial(g.pick, g.SPANISH), "Translate the word into Spanish.", "What is this in Spanish?",
       "Give the Spanish translation.", "Say it in Spanish.", held_out=True),
    _t("antonym", partial(g.pick, g.ANTONYMS), "Give the opposite of the word.", "What is the antonym?",
       "Answer with a word meaning the opposite.", "Reply with the word's opposite.",
       "Name the antonym of the adjective.", "Return the contrary of the given word."),
    _t("animal_sound", partial(g.pick, g.SOUNDS), "What sound does this animal make?",
       "Give the noise the animal makes.", "Answer with the animal's sound.", "How does this animal sound?",
       "Reply with the sound of the animal, one word.", "Name the call this animal makes."),
    _t("fruit_colour", partial(g.pick, g.COLOURS), "What colour is this fruit or vegetable?",
       "Answer with the colour of the food.", "Name its usual colour.", "Give the colour, one word.",
       "Which colour does it have?", "Reply with the typical colour of the item."),
    _t("category", partial(g.pick, g.CATEGORIES), "Is it an animal, a fruit or a vehicle?",
       "Classify the word as animal, fruit or vehicle.", "Answer with its category: animal, fruit or vehicle.",
       "Which group does the word belong to: animal, fruit or vehicle?", "Categorise the item.",
       "Label the thing as animal, fruit, or vehicle.", check="label"),
    _t("letter_count", partial(g.letters, 0, True), "How many letters are in the word?",
       "Count the letters and answer with a number.", "Reply with the length of the word.",
       "Give the number of characters in the word.", "Answer with how many letters it has.",
       "Tell me the word's letter count as digits."),
    _t("first_letter", partial(g.letters, 0, False), "What is the first letter of the word?",
       "Answer with the word's initial letter.", "Reply with the letter the word starts with.",
       "Give only the first character.", "Return the opening letter.", "Which letter begins the word?"),
    _t("last_letter", partial(g.letters, -1, False), "What is the last letter of the word?",
       "Answer with the word's final letter.", "Reply with the letter the word ends with.",
       "Give only the last character.", "Return the closing letter.", "Which letter ends the word?"),
]


def task_split() -> tuple[list[Task], list[Task]]:
    """(training tasks, held-out tasks)."""
    return [t for t in TASKS if not t.held_out], [t for t in TASKS if t.held_out]


def task_by_name(name: str) -> Task:
    """The task called ``name``.

    Raises:
        KeyError: no such task.
    """
    for t in TASKS:
        if t.name == name:
            return t
    raise KeyError(f"no T2L task named {name!r}; known: {[t.name for t in TASKS]}")


@dataclass
class TaskBatch:
    """A student batch (example inputs alone as prompts) plus each row's task and description."""

    batch: StudentBatch
    tasks: list[str]
    descriptions: list[str]


def task_batches(tokenizer: PreTrainedTokenizerBase, tasks: list[Task], batch_size: int, seed: int,
                 start: int = 0) -> Iterator[TaskBatch]:
    """An endless, reproducible stream of batches: batch ``k`` depends only on ``seed`` and ``k``.

    Every row draws a task, one of its training descriptions (any description for
    a held-out task) and a fresh example, so a run resumed at step ``start`` sees
    exactly the batches an uninterrupted run would have.
    """
    k = start
    while True:
        rng = random.Random(f"t2l-batch:{seed}:{k}")
        chosen = [rng.choice(tasks) for _ in range(batch_size)]
        descriptions = [rng.choice(t.train_descriptions or t.descriptions) for t in chosen]
        pairs = [t.make(rng) for t in chosen]
        batch = student_batch(tokenizer, [p for p, _ in pairs], [answer_ids(tokenizer, a) for _, a in pairs],
                              list(range(batch_size)))
        yield TaskBatch(batch, [t.name for t in chosen], descriptions)
        k += 1
