"""Word banks and example generators for the Text-to-LoRA multi-task set (:mod:`.data`).

Each generator takes a ``random.Random`` and returns one ``(input, output)``
pair; outputs are canonical (one right answer), so exact match is a fair metric.
"""

from __future__ import annotations

import json
import random

ADJECTIVES = ["red", "big", "small", "happy", "quiet", "old", "new", "bright", "cold", "warm", "fast", "slow",
              "green", "blue", "soft", "loud", "tiny", "brave", "lazy", "shiny"]
VERBS = ["runs", "sleeps", "jumps", "sings", "waits", "reads", "swims", "smiles", "falls", "shines", "grows", "rests"]
REGULAR_NOUNS = ["cat", "dog", "apple", "car", "house", "tree", "book", "river", "bird", "chair", "table", "flower",
                 "window", "cloud", "bottle", "garden", "road", "ship", "lamp", "phone", "horse", "pencil", "door"]
PLURALS = {**{n: n + "s" for n in REGULAR_NOUNS}, "child": "children", "mouse": "mice", "man": "men",
           "woman": "women", "foot": "feet", "tooth": "teeth", "goose": "geese", "person": "people", "city": "cities",
           "baby": "babies", "party": "parties", "story": "stories", "box": "boxes", "bus": "buses", "dish": "dishes",
           "glass": "glasses", "watch": "watches", "leaf": "leaves", "knife": "knives", "wolf": "wolves"}
NAMES = ["Alice", "Maria", "James", "Omar", "Lena", "Peter", "Sofia", "Ravi", "Hannah", "Lucas", "Mei", "Daniel",
         "Fatima", "Noah", "Elena", "Kofi"]
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Russia": "Moscow", "China": "Beijing", "Greece": "Athens",
            "Portugal": "Lisbon", "Poland": "Warsaw", "Norway": "Oslo", "Kenya": "Nairobi", "Peru": "Lima",
            "Austria": "Vienna", "Ireland": "Dublin", "Sweden": "Stockholm", "Thailand": "Bangkok", "Cuba": "Havana"}
FRENCH = {"hello": "bonjour", "thank you": "merci", "goodbye": "au revoir", "yes": "oui", "no": "non",
          "please": "s'il vous plait", "good night": "bonne nuit", "cat": "chat", "dog": "chien", "water": "eau",
          "bread": "pain", "house": "maison", "friend": "ami", "book": "livre", "red": "rouge", "sun": "soleil"}
SPANISH = {"hello": "hola", "thank you": "gracias", "goodbye": "adios", "yes": "si", "please": "por favor",
           "cat": "gato", "dog": "perro", "water": "agua", "bread": "pan", "house": "casa", "friend": "amigo",
           "book": "libro", "red": "rojo", "sun": "sol", "good night": "buenas noches"}
ANTONYMS = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "old": "young", "light": "dark",
            "up": "down", "open": "closed", "early": "late", "strong": "weak", "full": "empty", "rich": "poor",
            "hard": "soft", "tall": "short", "wet": "dry", "loud": "quiet", "clean": "dirty", "first": "last"}
SOUNDS = {"dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "lion": "roar",
          "snake": "hiss", "owl": "hoot", "pig": "oink", "horse": "neigh", "bee": "buzz", "mouse": "squeak"}
COLOURS = {"banana": "yellow", "lemon": "yellow", "strawberry": "red", "cherry": "red", "tomato": "red",
           "lime": "green", "cucumber": "green", "orange": "orange", "carrot": "orange", "blueberry": "blue",
           "grape": "purple", "plum": "purple", "coconut": "brown", "broccoli": "green", "pumpkin": "orange"}
CATEGORIES = {**{w: "animal" for w in ["dog", "cat", "horse", "lion", "tiger", "rabbit", "eagle", "shark", "frog"]},
              **{w: "fruit" for w in ["apple", "banana", "mango", "pear", "peach", "cherry", "grape", "melon"]},
              **{w: "vehicle" for w in ["car", "bus", "truck", "bicycle", "train", "boat", "plane", "scooter"]}}
LETTER_WORDS = sorted({*REGULAR_NOUNS, *ADJECTIVES, "banana", "orange", "window", "yellow", "purple", "music"})
POSITIVE = ["wonderful", "great", "brilliant", "delightful", "excellent", "moving", "charming", "superb"]
NEGATIVE = ["terrible", "boring", "awful", "dull", "painful", "weak", "disappointing", "dreadful"]
MOVIE_TEMPLATES = ["The movie was {w}.", "I found the film {w} from start to finish.", "What a {w} performance.",
                   "The plot was {w} and the ending too.", "Honestly, the acting was {w}."]
PRODUCT_TEMPLATES = ["This blender is {w}.", "The headphones arrived and they are {w}.",
                     "Battery life on this phone is {w}.", "The shoes feel {w} after a week.",
                     "Customer service for this kettle was {w}."]
YEAR_TEMPLATES = ["The bridge opened in {y} after long delays.", "She moved to the city in {y}.",
                  "In {y} the old factory finally closed.", "The song was first recorded in {y}."]
AMOUNT_TEMPLATES = ["The box holds {n} eggs.", "We counted {n} birds on the lake.",
                    "The train has {n} carriages today.", "There are {n} chairs in the hall."]
NAME_TEMPLATES = ["Yesterday {p} bought a new bicycle.", "The letter was written by {p}.",
                  "At noon {p} walked to the station.", "Everyone waited while {p} read the report."]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 100, hyphenated: 42 -> 'forty-two'."""
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("-" + ONES[ones] if ones else "")


def phrase(rng: random.Random) -> str:
    """A short lowercase sentence: 'the brave cat sleeps'."""
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(REGULAR_NOUNS)} {rng.choice(VERBS)}"


def pick(table: dict[str, str], rng: random.Random, invert: bool = False) -> tuple[str, str]:
    key = rng.choice(sorted(table))
    return (table[key], key) if invert else (key, table[key])


def sentiment(templates: list[str], labels: tuple[str, str], rng: random.Random) -> tuple[str, str]:
    good = rng.random() < 0.5
    word = rng.choice(POSITIVE if good else NEGATIVE)
    return rng.choice(templates).format(w=word), labels[0] if good else labels[1]


def two_numbers(rng: random.Random) -> tuple[int, int]:
    a, b = rng.sample(range(1, 100), 2)
    return a, b


def arithmetic(op: str, rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 12), rng.randint(1, 12)
    if op == "minus":
        a, b = max(a, b), min(a, b)
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    return f"{number_words(a)} {op} {number_words(b)}", str(value)


def json_person(rng: random.Random) -> tuple[str, str]:
    name, age = rng.choice(NAMES), rng.randint(18, 90)
    return f"{name} is {age} years old.", json.dumps({"name": name, "age": age})


def json_city(rng: random.Random) -> tuple[str, str]:
    country, city = pick(CAPITALS, rng)
    return f"{city} is the capital of {country}.", json.dumps({"city": city, "country": country})


def word_list(rng: random.Random) -> str:
    """Three to five distinct random words: 'garden quiet lamp music'."""
    return " ".join(rng.sample(LETTER_WORDS, rng.randint(3, 5)))


def word_pick(index: int, rng: random.Random) -> tuple[str, str]:
    text = word_list(rng)
    return text, text.split()[index]


def change_case(style: str, rng: random.Random) -> tuple[str, str]:
    text = phrase(rng)
    if style == "lower":
        return rng.choice([text.upper(), text.title()]), text
    return text, text.upper() if style == "upper" else text.title()


def compare(largest: bool, rng: random.Random) -> tuple[str, str]:
    a, b = two_numbers(rng)
    return f"{a} or {b}", str(max(a, b) if largest else min(a, b))


def neighbour(step: int, rng: random.Random) -> tuple[str, str]:
    n = rng.randint(2, 98)
    return str(n), str(n + step)


def from_template(templates: list[str], key: str, values: list, rng: random.Random) -> tuple[str, str]:
    value = rng.choice(values)
    return rng.choice(templates).format(**{key: value}), str(value)


def letters(index: int, count: bool, rng: random.Random) -> tuple[str, str]:
    word = rng.choice(LETTER_WORDS)
    return word, str(len(word)) if count else word[index]


def reverse_words(rng: random.Random) -> tuple[str, str]:
    text = word_list(rng)
    return text, " ".join(reversed(text.split()))


def count_words(rng: random.Random) -> tuple[str, str]:
    text = " ".join(rng.sample(LETTER_WORDS, rng.randint(1, 7)))
    return text, str(len(text.split()))


def spelled_number(to_words: bool, rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 99)
    return (str(n), number_words(n)) if to_words else (number_words(n), str(n))
