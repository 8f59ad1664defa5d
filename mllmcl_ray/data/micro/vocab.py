"""Word lists and the knowledge base shared by the micro world's text and images.

The text corpus and the vision-language (VL) tasks deliberately share words (colours,
shape nouns, numbers, positions) so that VL fine-tuning moves probability mass onto
words the language evals also need: that is what makes linguistic forgetting visible
in a ~1M-parameter model.

Everything here is a constant (tuples, never sets): iteration order is fixed, so
generation never depends on Python's string hashing.
"""

from __future__ import annotations

# Characters. Same-gender pairs make a pronoun ambiguous (Winograd style).
NAMES_F: tuple[str, ...] = (
    "Anna", "Mary", "Lily", "Emma", "Sara", "Lucy", "Kate", "Nora", "Ella", "Mia", "Rose", "Jane",
)
NAMES_M: tuple[str, ...] = (
    "Tom", "Ben", "Sam", "Jack", "Leo", "Max", "Dan", "Paul", "Tim", "Noah", "Luke", "Adam",
)
NAMES: tuple[str, ...] = NAMES_F + NAMES_M
PRONOUN = {"f": "she", "m": "he"}


def gender(name: str) -> str:
    return "f" if name in NAMES_F else "m"


# Colours: the first seven are the VL colours (with their RGB rendering), the rest text-only.
VL_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 220, 50),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
COLORS: tuple[str, ...] = VL_COLORS + ("black", "pink", "brown")

# Shapes: the VL scenes use the first four; the `shapes` classification task uses all six.
SCENE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
CLASS_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "star")

# Things characters own in stories: toys plus the shape nouns (shared with VL answers).
TOYS: tuple[str, ...] = (
    "ball", "box", "cup", "hat", "kite", "book", "doll", "drum", "bell", "car", "boat", "key",
)
OBJECTS: tuple[str, ...] = TOYS + CLASS_SHAPES

PLACES: tuple[str, ...] = (
    "kitchen", "garden", "park", "school", "library", "garage",
    "bedroom", "yard", "shop", "attic", "hall", "barn",
)

# Positions: the same phrases are used in stories and in VL captions / answers.
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
POS_PHRASE: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

NUMBERS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
)
DIGIT_WORDS: tuple[str, ...] = NUMBERS[:10]

# Words rendered into OCR images: short (<= 5 letters fit 32 px with the bitmap font),
# all of them also corpus words.
OCR_WORDS: tuple[str, ...] = (
    "ball", "box", "cup", "hat", "kite", "book", "doll", "drum", "bell", "car",
    "boat", "key", "cat", "dog", "sun", "tree", "fish", "bird", "moon", "cake",
)


def a(word: str) -> str:
    """'a ball', 'an orange ball'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def plural(noun: str) -> str:
    if noun.endswith(("x", "s", "sh", "ch")):
        return noun + "es"
    return noun + "s"


# ---------------------------------------------------------------------------------------
# Knowledge base. Each fact: (statement variants, question, answer, answer category).
# Distractors for multiple choice come from the same category. Statements are what the
# corpus says; questions use the lm-eval ARC prompt "Question: {q}\nAnswer:".
# ---------------------------------------------------------------------------------------
Fact = tuple[tuple[str, ...], str, str, str]

_COLOR_OF = (
    ("grass", "is", "green"), ("the sky", "is", "blue"), ("snow", "is", "white"),
    ("coal", "is", "black"), ("a banana", "is", "yellow"), ("a strawberry", "is", "red"),
    ("an orange", "is", "orange"), ("milk", "is", "white"), ("a leaf", "is", "green"),
    ("chocolate", "is", "brown"), ("a plum", "is", "purple"), ("the sea", "is", "blue"),
    ("a lemon", "is", "yellow"), ("a cherry", "is", "red"), ("a carrot", "is", "orange"),
    ("a crow", "is", "black"), ("a flamingo", "is", "pink"), ("a frog", "is", "green"),
    ("a pumpkin", "is", "orange"), ("a grape", "is", "purple"), ("a tomato", "is", "red"),
    ("mud", "is", "brown"), ("a cloud", "is", "white"), ("the sun", "is", "yellow"),
)

_COUNT_OF = (
    ("a triangle", "sides", "three"), ("a square", "sides", "four"), ("a cross", "arms", "four"),
    ("a spider", "legs", "eight"), ("a dog", "legs", "four"), ("a bird", "legs", "two"),
    ("a week", "days", "seven"), ("a hand", "fingers", "five"), ("a year", "months", "twelve"),
    ("a bicycle", "wheels", "two"), ("a car", "wheels", "four"), ("a tricycle", "wheels", "three"),
    ("a star", "points", "five"), ("a cat", "legs", "four"), ("an insect", "legs", "six"),
    ("a cube", "faces", "six"),
)

_SHAPE_OF = (
    ("a wheel", "circle"), ("a coin", "circle"), ("the full moon", "circle"), ("a window", "square"),
    ("a slice of pizza", "triangle"), ("a plus sign", "cross"), ("a kite", "diamond"),
    ("a sheriff badge", "star"), ("a ring", "circle"), ("a chess board", "square"),
)

_PLACE_OF = (
    ("Books are kept in the library.", "Where are books kept?", "library"),
    ("Food is cooked in the kitchen.", "Where is food cooked?", "kitchen"),
    ("Cars are kept in the garage.", "Where are cars kept?", "garage"),
    ("Flowers grow in the garden.", "Where do flowers grow?", "garden"),
    ("Children learn at school.", "Where do children learn?", "school"),
    ("Cows sleep in the barn.", "Where do cows sleep?", "barn"),
    ("People sleep in the bedroom.", "Where do people sleep?", "bedroom"),
    ("Old boxes are stored in the attic.", "Where are old boxes stored?", "attic"),
    ("People buy bread at the shop.", "Where do people buy bread?", "shop"),
    ("Children play on the swings in the park.", "Where do children play on the swings?", "park"),
)

_ABILITY_OF = (
    ("a bird", "fly"), ("a fish", "swim"), ("a frog", "jump"), ("a horse", "run"),
    ("a snake", "crawl"), ("a dog", "bark"), ("a cat", "climb"), ("a duck", "swim"),
    ("a bee", "fly"), ("a kangaroo", "jump"),
)

_OPPOSITE_OF = (
    ("hot", "cold"), ("big", "small"), ("left", "right"), ("top", "bottom"), ("up", "down"),
    ("day", "night"), ("fast", "slow"), ("old", "new"), ("happy", "sad"), ("open", "closed"),
)
_OPPOSITE_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys([w for pair in _OPPOSITE_OF for w in pair])
)


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def common_facts() -> list[Fact]:
    facts: list[Fact] = []
    for subj, verb, col in _COLOR_OF:
        facts.append((
            (f"{_cap(subj)} {verb} {col}.", f"The color of {subj} is {col}."),
            f"What color is {subj}?", col, "color",
        ))
    for subj, unit, n in _COUNT_OF:
        facts.append((
            (f"{_cap(subj)} has {n} {unit}.", f"There are {n} {unit} on {subj}."),
            f"How many {unit} does {subj} have?", n, "number",
        ))
    for subj, shape in _SHAPE_OF:
        facts.append((
            (f"{_cap(subj)} looks like a {shape}.", f"The shape of {subj} is a {shape}."),
            f"What shape is {subj}?", shape, "shape",
        ))
    for statement, question, place in _PLACE_OF:
        facts.append(((statement,), question, place, "place"))
    for subj, ability in _ABILITY_OF:
        facts.append((
            (f"{_cap(subj)} can {ability}.", f"Everyone knows that {subj} can {ability}."),
            f"What can {subj} do?", ability, "ability",
        ))
    for a, b in _OPPOSITE_OF:
        facts.append((
            (f"The opposite of {a} is {b}.", f"{_cap(a)} is the opposite of {b}."),
            f"What is the opposite of {a}?", b, "opposite",
        ))
    return facts


CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "number": NUMBERS[1:],
    "shape": CLASS_SHAPES,
    "place": PLACES,
    "ability": ("fly", "swim", "jump", "run", "crawl", "bark", "climb"),
    "opposite": _OPPOSITE_WORDS,
    "name": NAMES,
    "toy": OBJECTS,
}


def character_facts(rng) -> list[Fact]:
    """Seeded facts about the story characters (favourite colour, toy, place)."""
    facts: list[Fact] = []
    for name in NAMES:
        col = COLORS[int(rng.integers(len(COLORS)))]
        toy = TOYS[int(rng.integers(len(TOYS)))]
        place = PLACES[int(rng.integers(len(PLACES)))]
        facts.append(((f"{name} likes the color {col}.", f"The favorite color of {name} is {col}."),
                      f"What color does {name} like?", col, "color"))
        facts.append(((f"{name} likes to play with a {toy}.", f"The favorite toy of {name} is the {toy}."),
                      f"What toy does {name} like?", toy, "toy"))
        facts.append(((f"{name} likes to be in the {place}.", f"The favorite place of {name} is the {place}."),
                      f"What place does {name} like?", place, "place"))
    return facts
