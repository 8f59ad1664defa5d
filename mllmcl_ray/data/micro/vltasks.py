"""Vision-language task records of the micro world (LLaVA conversation format).

Each builder takes a :class:`~mllmcl_ray.data.micro.rand.Rand` and a scene dict (see
:mod:`.scenes`) and returns ``(turns, extra)``: ``turns`` is a list of ``(question, answer)``
pairs (the first question gets the ``<image>\\n`` prefix when the record is assembled) and
``extra`` holds the fields a test record carries for its scorer.
"""

from __future__ import annotations

from . import vocab as V
from .rand import Rand
from .scenes import format_bbox, normalized_bbox, pixel_bbox

VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
OCR_QUESTIONS = ("What word is written in the image?", "What does the text in the image say?",
                 "Read the word in the image.")
# OCR-VQA asks more than "what does it say": a large share of its questions are yes/no
# ("Is this a comedy book?") about the text. Train records ask "Is the word "X" written in
# the image?" with this probability (X the word itself half of the time); test records
# always ask to read the word, so the OCR score stays a reading score.
OCR_VERIFY_QUESTION = 'Is the word "{word}" written in the image?'
OCR_VERIFY_P = 0.3
GROUNDING_PROMPTS = ("Give the bounding box of {ref}.",
                     "Please provide the bounding box coordinate of the region this sentence describes: {ref}.")
# EMT prompt (Zhai et al.): "What is the object in the image? Please only answer a single object in <labels>."
EMT_PROMPT = "What is the object in the image? Please only answer a single object in {labels}."

# VQAv2-style answer variants, used for a few of the 10 reference answers
SYNONYMS = {
    "purple": "violet", "center": "middle", "left": "on the left", "right": "on the right",
    "top": "at the top", "bottom": "at the bottom", "zero": "0", "one": "1", "two": "2",
    "three": "3", "square": "box", "cross": "plus", "circle": "round",
}


def emt_prompt(labels) -> str:
    return EMT_PROMPT.format(labels=", ".join(labels))


# ----------------------------------------------------------------------------- phrases
def noun_phrase(obj: dict, with_size: bool = True) -> str:
    words = [obj["color"], obj["shape"]]
    if with_size and obj.get("size"):
        words.insert(0, obj["size"])
    return V.a(" ".join(words))


def caption(scene: dict) -> str:
    parts = [f"{noun_phrase(o)} {V.POS_PHRASE[o['position']]}" for o in scene["objects"]]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _shape_list(scene: dict) -> str:
    counts: dict[str, int] = {}
    for o in scene["objects"]:
        counts[o["shape"]] = counts.get(o["shape"], 0) + 1
    parts = [V.a(s) if n == 1 else f"{V.NUMBERS[n]} {V.plural(s)}" for s, n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _unique_shape(scene: dict, obj: dict) -> bool:
    return sum(o["shape"] == obj["shape"] for o in scene["objects"]) == 1


def _unique_color(scene: dict, obj: dict) -> bool:
    return sum(o["color"] == obj["color"] for o in scene["objects"]) == 1


def _absent_pair(rnd: Rand, scene: dict) -> tuple[str, str]:
    present = {(o["color"], o["shape"]) for o in scene["objects"]}
    pairs = [(c, s) for c in V.VL_COLORS for s in V.SCENE_SHAPES if (c, s) not in present]
    return rnd.pick(pairs)


def referring_expression(rnd: Rand, scene: dict, obj: dict) -> str:
    options = [(f"the {obj['color']} {obj['shape']}", 0.4),
               (f"the {obj['color']} {obj['shape']} {V.POS_PHRASE[obj['position']]}", 0.15)]
    if _unique_shape(scene, obj):
        options.append((f"the {obj['shape']}", 0.25))
    if len(scene["objects"]) > 1:
        options.append((f"the shape {V.POS_PHRASE[obj['position']]}", 0.2))
    return rnd.choose([o for o, _ in options], [p for _, p in options])


# ----------------------------------------------------------------------------- builders
def build_caption(rnd: Rand, scene: dict):
    cap = caption(scene)
    return [("", cap)], {"answers": [cap]}


def _instruct_qa(rnd: Rand, scene: dict, kind: str) -> tuple[str, str]:
    objs = scene["objects"]
    obj = rnd.pick(objs)
    pos = V.POS_PHRASE[obj["position"]]
    if kind == "describe":
        q, a = rnd.pick((("What do you see in the image?", "I see {cap}."),
                         ("Describe the image briefly.", "The image shows {cap}."),
                         ("What is in this picture?", "This picture has {cap}.")))
        return q, a.format(cap=caption(scene))
    if kind == "count":
        n = len(objs)
        return ("How many shapes are in the image?",
                "There is one shape in the image." if n == 1 else f"There are {V.NUMBERS[n]} shapes in the image.")
    if kind == "color":
        if _unique_shape(scene, obj):
            return f"What color is the {obj['shape']}?", f"The {obj['shape']} is {obj['color']}."
        return (f"What color is the {obj['shape']} {pos}?", f"The {obj['shape']} {pos} is {obj['color']}.")
    if kind == "where":
        np_ = f"{obj['color']} {obj['shape']}"
        return f"Where is the {np_}?", f"The {np_} is {pos}."
    if kind == "exists":
        if rnd.coin(0.5):
            return (f"Is there {V.a(obj['color'])} {obj['shape']} in the image?",
                    f"Yes, there is {V.a(obj['color'])} {obj['shape']} {pos}.")
        c, s = _absent_pair(rnd, scene)
        return f"Is there {V.a(c)} {s} in the image?", f"No, there is no {c} {s} in the image."
    if kind == "shapes":
        return "What shapes can you see?", f"I can see {_shape_list(scene)}."
    if kind == "what_at":
        return f"What is {pos}?", f"There is {noun_phrase(obj)} {pos}."
    if kind == "size":
        np_ = f"{obj['color']} {obj['shape']}"
        return f"Is the {np_} small or large?", f"The {np_} is {obj['size']}."
    raise ValueError(kind)


INSTRUCT_KINDS = ("describe", "count", "color", "where", "exists", "shapes", "what_at", "size")


def build_instruct(rnd: Rand, scene: dict, max_turns: int = 3):
    kinds = [k for k in INSTRUCT_KINDS if k != "size" or scene["objects"][0].get("size")]
    n_turns = rnd.integers(1, max_turns + 1)
    turns = [_instruct_qa(rnd, scene, k) for k in rnd.pick_k(kinds, n_turns)]
    return turns, {"answers": [turns[0][1]]}


VQA_KINDS = ("color", "shape", "count", "position", "yesno", "relation")
VQA_KIND_P = (0.2, 0.2, 0.15, 0.15, 0.2, 0.1)


def _vqa_qa(rnd: Rand, scene: dict, kind: str) -> tuple[str, str, str]:
    objs = scene["objects"]
    obj = rnd.pick(objs)
    pos = V.POS_PHRASE[obj["position"]]
    if kind == "relation":
        idx = objs.index(obj)
        if len(objs) == 1:
            kind = "color"
        else:
            if idx == 0:
                idx = rnd.integers(1, len(objs))
            ref, nb = objs[idx], objs[idx - 1]
            rel = "to the left of" if objs[0]["position"] == "left" else "above"
            return kind, f"What shape is {rel} the {ref['color']} {ref['shape']}?", nb["shape"]
    if kind == "color":
        if _unique_shape(scene, obj) and rnd.coin(0.6):
            return kind, f"What color is the {obj['shape']}?", obj["color"]
        return kind, f"What color is the shape {pos}?", obj["color"]
    if kind == "shape":
        if _unique_color(scene, obj) and rnd.coin(0.5):
            return kind, f"What shape is the {obj['color']} object?", obj["shape"]
        return kind, f"What shape is {pos}?", obj["shape"]
    if kind == "count":
        if rnd.coin(0.5):
            return kind, "How many shapes are there?", V.NUMBERS[len(objs)]
        c = obj["color"] if rnd.coin(0.7) else rnd.pick(V.VL_COLORS)
        return kind, f"How many {c} shapes are there?", V.NUMBERS[sum(o["color"] == c for o in objs)]
    if kind == "position":
        return kind, f"Where is the {obj['color']} {obj['shape']}?", obj["position"]
    if kind == "yesno":
        if rnd.coin(0.5):
            return kind, f"Is there {V.a(obj['color'])} {obj['shape']}?", "yes"
        c, s = _absent_pair(rnd, scene)
        return kind, f"Is there {V.a(c)} {s}?", "no"
    raise ValueError(kind)


def vqa_answers(rnd: Rand, answer: str, n: int = 10) -> list[str]:
    """VQAv2-style references: `answer` first and in the majority; sometimes 1-3 synonyms."""
    answers = [answer] * n
    syn = SYNONYMS.get(answer)
    if syn is not None and rnd.coin(0.3):
        for i in rnd.pick_k(range(1, n), rnd.integers(1, 4)):
            answers[i] = syn
    return answers


def build_vqa(rnd: Rand, scene: dict):
    kind, q, a = _vqa_qa(rnd, scene, rnd.choose(VQA_KINDS, VQA_KIND_P))
    return [(q + VQA_SUFFIX, a)], {"answers": vqa_answers(rnd, a), "question_type": kind}


def build_ocr(rnd: Rand, scene: dict, test: bool = False):
    word = scene["word"]
    if not test and rnd.coin(OCR_VERIFY_P):
        asked = word if rnd.coin(0.5) else rnd.pick([w for w in V.OCR_WORDS if w != word])
        q, a = OCR_VERIFY_QUESTION.format(word=asked), "yes" if asked == word else "no"
        return [(q + VQA_SUFFIX, a)], {"answers": [a]}
    q = OCR_QUESTIONS[0] if test else rnd.pick(OCR_QUESTIONS)
    return [(q + VQA_SUFFIX, word)], {"answers": [word]}


def build_grounding(rnd: Rand, scene: dict, masks, test: bool = False):
    i = rnd.integers(len(scene["objects"]))
    obj = scene["objects"][i]
    box = normalized_bbox(pixel_bbox(masks[i]), scene["size"])
    ref = referring_expression(rnd, scene, obj)
    prompt = GROUNDING_PROMPTS[0] if test else rnd.pick(GROUNDING_PROMPTS)
    text = format_bbox(box)
    return [(prompt.format(ref=ref), text)], {"answers": [text], "bbox": box, "object_index": i,
                                               "ref": ref}


def build_classification(label: str, labels) -> tuple:
    return [(emt_prompt(labels), label)], {"answers": [label], "label": label, "labels": list(labels)}
