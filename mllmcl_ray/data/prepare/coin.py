"""CoIN (Chen et al.): its Hugging Face release ``Zacks-Chen/CoIN`` read as is.

The release holds ``Instructions_Original/<Dir>/{train,test}.json`` (also
``Instructions_Diverse`` and ``Instructions_10Type``; the study rewrites prompts itself,
mllmcl_ray/data/instructions.py) in LLaVA conversation JSON; images are the constituent
datasets' own (COCO2014/, GQA/, OCR-VQA/, TextVQA/, ScienceQA/, VizWiz/, ImageNet/ ...),
given with ``--images`` and linked into ``<root>/images``. Written to
``<root>/Instructions/<Task>/{train,test}.json`` under the task names of studies/coin.py,
records unchanged except: an ``id`` from ``question_id`` where only that is given; test
records in LLaVA's eval form (``question_id``, ``image``, ``text``, ``answer``: what CoIN's
eval scripts read) get ``conversations`` with the question and, as the final ``gpt`` turn,
the ``answer``;
Grounding test records get ``bbox`` (the answer's ``[x1, y1, x2, y2]``, normalised);
TextVQA test records get ``answers``, the 10 TextVQA val answers of their question_id
(CoIN scores TextVQA against them; source key ``textvqa``, `textvqa_answers`).
"""
from __future__ import annotations

import re

from ..instruct import iter_raw
from .base import Manifest, PrepareContext, SourceError, hub_snapshot, link_images, run_dataset
from .srivastava import JSONArrayWriter

COIN_VERSION = "coin-v1"
COIN_HUB = "Zacks-Chen/CoIN"
COIN_VARIANT_DIR = "Instructions_Original"
# studies/coin.py task name -> directory names the release has used for it
COIN_TASKS: dict[str, tuple[str, ...]] = {
    "ScienceQA": ("ScienceQA",), "TextVQA": ("TextVQA",), "ImageNet": ("ImageNet",),
    "GQA": ("GQA",), "VizWiz": ("VizWiz",), "Grounding": ("Grounding",),
    "VQAv2": ("VQAv2",), "OCR-VQA": ("OCRVQA", "OCR-VQA"),
}
_NUM = r"-?\d+(?:\.\d+)?"
_BOX = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


def parse_box(text: str, *, what: str) -> list[float]:
    """A normalised [x1, y1, x2, y2] from a Grounding answer; outside [0, 1] raises."""
    m = _BOX.search(str(text))
    if not m:
        raise SourceError(f"{what}: answer {text!r} is not a box [x1, y1, x2, y2]")
    box = [float(v) for v in m.groups()]
    if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise SourceError(f"{what}: box {box} lies outside the image (not in [0, 1] or empty)")
    return box


def normalize_coin_record(rec, *, task: str, split: str, what: str) -> dict:
    if not isinstance(rec, dict):
        raise SourceError(f"{what}: expected an object")
    if "id" not in rec:
        if "question_id" not in rec:
            raise SourceError(f"{what}: field 'id' (or 'question_id') is missing")
        rec["id"] = rec["question_id"]
    convs = rec.get("conversations")
    if convs is None and isinstance(rec.get("text"), str):
        # CoIN's test files in LLaVA's eval form: {question_id, image, text, answer}
        # (llava/eval/CoIN/model_vqa_cc_instruction.py reads "text", the scorers "answer")
        text = rec["text"]
        if rec.get("image") and "<image>" not in text:
            text = "<image>\n" + text
        convs = rec["conversations"] = [{"from": "human", "value": text}]
    if not isinstance(convs, list) or not convs:
        raise SourceError(f"{what} (id={rec['id']}): field 'conversations' (or 'text') is "
                          "missing")
    if convs[-1].get("from") != "gpt":
        if split == "test" and rec.get("answer") not in (None, ""):
            convs.append({"from": "gpt", "value": str(rec["answer"])})
        else:
            raise SourceError(f"{what} (id={rec['id']}): the record has no answer (no final "
                              "'gpt' turn and no 'answer' field)")
    if split == "test":
        answer = rec.get("answer", convs[-1]["value"])
        if answer in (None, ""):
            raise SourceError(f"{what} (id={rec['id']}): the record has no answer")
        rec.setdefault("answer", answer)
        if task == "Grounding":
            rec["bbox"] = parse_box(answer, what=f"{what} (id={rec['id']})")
    return rec


TEXTVQA_HUB = "lmms-lab/textvqa"  # TextVQA 0.5.1 val: the 10 answers CoIN's TextVQA scoring uses


def textvqa_answers(ctx: PrepareContext) -> dict[str, list[str]]:
    """question_id -> the 10 TextVQA val answers. CoIN scores TextVQA with m4c's
    TextVQAAccuracyEvaluator against ``TextVQA_0.5.1_val.json`` by question_id
    (llava/eval/CoIN/eval_textvqa.py); its test.json carries one answer only."""
    from .base import load_split, require_fields

    source = ctx.source("textvqa", TEXTVQA_HUB)
    what = f"coin/TextVQA answers ({TEXTVQA_HUB}, split validation)"
    ds = load_split(source, "validation", what=what)
    require_fields(ds, ("question_id", "answers"), what=what, source=source)
    ds = ds.select_columns(["question_id", "answers"])  # no image decoding
    return {str(q): list(a) for q, a in zip(ds["question_id"], ds["answers"])}


def prepare_coin(ctx: PrepareContext) -> list:
    out_dir = ctx.root / "Instructions"
    manifest = Manifest.load(out_dir, "coin")
    link_images(ctx.images, ctx.root)
    source = ctx.source("coin", COIN_HUB)
    results = []
    for task, dirs in COIN_TASKS.items():
        src_key = (f"coin={source};textvqa={ctx.source('textvqa', TEXTVQA_HUB)}"
                   if task == "TextVQA" else source)

        def build(task=task, dirs=dirs):
            base = hub_snapshot(source, [f"{COIN_VARIANT_DIR}/{d}/*.json" for d in dirs],
                                what=f"coin/{task}")
            found = next((base / COIN_VARIANT_DIR / d for d in dirs
                          if (base / COIN_VARIANT_DIR / d).is_dir()), None)
            if found is None:
                raise SourceError(f"coin/{task}: none of {', '.join(dirs)} under "
                                  f"{base / COIN_VARIANT_DIR}; is this CoIN's release?")
            counts = {}
            for split in ("train", "test"):
                src = found / f"{split}.json"
                if not src.exists():
                    raise SourceError(f"coin/{task}: split {split} is missing ({src})")
                answers = textvqa_answers(ctx) if (task, split) == ("TextVQA", "test") else None
                w = JSONArrayWriter(out_dir / task / f"{split}.json")
                try:
                    for i, rec in ctx.bar(iter_raw(src), desc=f"coin/{task}/{split}"):
                        rec = normalize_coin_record(rec, task=task, split=split,
                                                    what=f"{src}: record {i}")
                        if answers is not None:
                            qid = str(rec.get("question_id", rec["id"]))
                            if not answers.get(qid):
                                raise SourceError(f"{src}: record {i} (question_id={qid}): no "
                                                  "TextVQA val answers for it (a record without "
                                                  "answers)")
                            rec["answers"] = answers[qid]
                        w.write(rec)
                    w.commit()
                except BaseException:
                    w.abort()
                    raise
                counts[split] = w.n
            return {"files": {f"{task}/{s}.json": n for s, n in counts.items()},
                    "counts": counts, "release_dir": f"{COIN_VARIANT_DIR}/{found.name}"}

        results.append(run_dataset(ctx, manifest, task, COIN_VERSION, src_key, build))
    return results

