"""Schema-exact fixtures of every source `mllmcl data prepare` reads, a few records each.

Every fixture has the real release's field names and types (the dataset cards /
reference code named in docs/data.md) and its hub file layout (``data/<split>-*.parquet``
or ``<config>/<split>-*.parquet`` written by `datasets`, LLaVA / CoIN JSON files, an
imagefolder for miniImageNet), with small real-looking images; the converters load them
through the same `datasets.load_dataset` / `load_from_disk` path as a download.
`build_fixture_sources(dir)` returns ``(sources, images_dir)`` for `prepare_data`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
CIFAR100_FINE = ["apple", "aquarium_fish", "baby", "bear", "beaver"]
CIFAR100_COARSE = ["aquatic_mammals", "fish", "flowers"]


def fake_photo(seed: int, size=(64, 48), mode: str = "RGB"):
    """A small image with a colour gradient and a few shapes (decodes like a photo)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(base[c] + 90 * xx / w + 60 * yy / h * (c - 1)) % 256 for c in range(3)],
                   -1).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(4, w // 2)), y0 + int(rng.integers(4, h // 2))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=col)
    return img.convert(mode)


def jpeg_bytes(img) -> dict:
    """An image cell as the hub stores photos: the JPEG file's bytes."""
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return {"bytes": buf.getvalue(), "path": None}


def _save_img(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _parquet(data: dict, features, path: Path) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(data, features=datasets.Features(features)).to_parquet(str(path))


def _shard(split: str) -> str:
    return f"{split}-00000-of-00001.parquet"


# ---------------------------------------------------------------------------------------
def build_nl(d: Path) -> dict[str, str]:
    from datasets import ClassLabel, List, Value

    S = Value("string")
    _parquet({"text": ["the cat sat on the warm mat", "she opened the door and saw her brother",
                       "after the long winter the river finally thawed"],
              "domain": [None, None, None]},
             {"text": S, "domain": S}, d / "lambada" / "data" / _shard("test"))
    for cfg, n in (("ARC-Easy", 4), ("ARC-Challenge", 3)):
        keys = ["A", "B", "C", "D"]
        _parquet({"id": [f"Mercury_{cfg}_{i}" for i in range(n)],
                  "question": [f"Which property of a mineral can be found by looking at it? ({i})"
                               for i in range(n)],
                  "choices": [{"text": ["luster", "mass", "weight", "hardness"], "label": keys}
                              for _ in range(n)],
                  "answerKey": [keys[i % 4] for i in range(n)]},
                 {"id": S, "question": S, "choices": {"text": List(S), "label": List(S)},
                  "answerKey": S}, d / "ai2_arc" / cfg / _shard("test"))
    _parquet({"sentence": ["Sarah was a much better surgeon than Maria so _ always got the "
                           "harder cases.", "The trophy does not fit in the suitcase because _ "
                           "is too big."],
              "option1": ["Sarah", "trophy"], "option2": ["Maria", "suitcase"],
              "answer": ["1", "1"]},
             {"sentence": S, "option1": S, "option2": S, "answer": S},
             d / "winogrande" / "winogrande_xl" / _shard("validation"))
    text = "The city councilmen refused the demonstrators a permit because they feared violence."
    _parquet({"text": [text, text], "pronoun": ["they", "they"], "pronoun_loc": [text.index("they")] * 2,
              "quote": ["they feared violence"] * 2, "quote_loc": [text.index("they")] * 2,
              "options": [["The city councilmen", "The demonstrators"]] * 2, "label": [0, 0],
              "source": ["(Winograd 1972)"] * 2},
             {"text": S, "pronoun": S, "pronoun_loc": Value("int32"), "quote": S,
              "quote_loc": Value("int32"), "options": List(S),
              "label": ClassLabel(names=["0", "1"]), "source": S},
             d / "winograd_wsc" / "wsc273" / _shard("test"))
    return {"lambada": str(d / "lambada"), "arc_easy": str(d / "ai2_arc"),
            "arc_challenge": str(d / "ai2_arc"), "winogrande": str(d / "winogrande"),
            "wsc": str(d / "winograd_wsc")}


def build_llava(d: Path, images: Path) -> dict[str, str]:
    align = []
    for i in range(4):
        rel = f"{i // 2:05d}/{i:09d}.jpg"
        _save_img(fake_photo(100 + i), images / "llava_pretrain" / rel)
        align.append({"id": f"{i:09d}", "image": rel, "conversations": [
            {"from": "human", "value": "Give a brief description of the image.\n<image>"},
            {"from": "gpt", "value": f"a small picture number {i}"}]})
    (d / "pretrain").mkdir(parents=True, exist_ok=True)
    (d / "pretrain" / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(align))

    def conv(q, a):
        return [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]

    mix, k = [], 0

    def add(image, conversations, rid=None):
        nonlocal k
        rec = {"id": rid if rid is not None else f"{k:012d}"}
        if image:
            _save_img(fake_photo(200 + k), images / image)
            rec["image"] = image
        rec["conversations"] = conversations
        mix.append(rec)
        k += 1

    add("coco/train2017/000000000009.jpg", conv("What is on the plate?", "Broccoli and rice."))
    add(None, [{"from": "human", "value": "Write a haiku about rain."},
               {"from": "gpt", "value": "Soft rain on the roof"}], rid="i6IyJda_0")
    add("coco/train2017/000000000025.jpg",
        conv("What animal is this?\nAnswer the question using a single word or phrase.", "giraffe"))
    add("coco/train2017/000000000030.jpg",
        conv("What is in the vase?\nA. roses\nB. tulips\nC. daisies\nD. lilies\nAnswer with "
             "the option's letter from the given choices directly.", "A"))
    add("gqa/images/2354786.jpg",
        conv("Is the sky blue?\nAnswer the question using a single word or phrase.", "Yes"))
    add("ocr_vqa/images/1590593332.jpg",
        conv("Who wrote this book?\nAnswer the question using a single word or phrase.",
             "Kay Hooper"))
    add("textvqa/train_images/0054c91397f2fe05.jpg",
        conv("Provide a one-sentence caption for the provided image.", "A sign on a wall."))
    add("coco/train2017/000000000034.jpg",
        conv("Please provide the bounding box coordinate of the region this sentence "
             "describes: zebra on the left.", "[0.05, 0.2, 0.5, 0.95]"))
    add("vg/VG_100K/2356347.jpg",
        conv("Please provide a short description for this region: [0.1, 0.1, 0.4, 0.5]",
             "a red car"))
    (d / "instruct").mkdir(parents=True, exist_ok=True)
    (d / "instruct" / "llava_v1_5_mix665k.json").write_text(json.dumps(mix))
    return {"llava_pretrain": str(d / "pretrain"), "llava_mix": str(d / "instruct")}


def build_vl_eval(d: Path, images: Path) -> dict[str, str]:
    from datasets import Image, List, Value

    S, I64 = Value("string"), Value("int64")
    n = 5
    _parquet({"question_type": ["what is"] * n,
              "multiple_choice_answer": ["dog", "2", "yes", "red", "kitchen"],
              "answers": [[{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                           for j in range(10)] for a in ["dog", "2", "yes", "red", "kitchen"]],
              "image_id": [262148 + i for i in range(n)], "answer_type": ["other"] * n,
              "question_id": [262148000 + i for i in range(n)],
              "question": [f"What is shown in picture {i}?" for i in range(n)],
              "image": [fake_photo(300 + i) for i in range(n)]},
             {"question_type": S, "multiple_choice_answer": S,
              "answers": List({"answer": S, "answer_confidence": S, "answer_id": I64}),
              "image_id": I64, "answer_type": S, "question_id": I64, "question": S,
              "image": Image()}, d / "VQAv2" / "data" / _shard("validation"))
    gqa_img = ["n161313", "n235859"]
    _parquet({"id": [f"20968{i}" for i in range(n)], "imageId": [gqa_img[i % 2] for i in range(n)],
              "question": [f"Is the table to the left of the chair? ({i})" for i in range(n)],
              "answer": ["yes", "no", "left", "wood", "black"],
              "fullAnswer": ["Yes, it is."] * n, "isBalanced": [True] * n,
              "semanticStr": ["select: table"] * n},
             {"id": S, "imageId": S, "question": S, "answer": S, "fullAnswer": S,
              "isBalanced": Value("bool"), "semanticStr": S},
             d / "GQA" / "testdev_balanced_instructions" / _shard("testdev"))
    _parquet({"id": gqa_img, "image": [fake_photo(400 + i) for i in range(2)]},
             {"id": S, "image": Image()}, d / "GQA" / "testdev_balanced_images" / _shard("testdev"))
    (d / "GQA" / "README.md").write_text(  # as lmms-lab/GQA's card: configs with a testdev split
        "---\nconfigs:\n" + "".join(
            f"- config_name: {c}\n  data_files:\n  - split: testdev\n    path: {c}/testdev-*\n"
            for c in ("testdev_balanced_instructions", "testdev_balanced_images")) + "---\n")
    _parquet({"image_id": [f"003a8ae2ef43b90{i}" for i in range(n)],
              "question_id": list(range(34602, 34602 + n)),
              "question": [f"what is the brand of this camera? ({i})" for i in range(n)],
              "question_tokens": [["what", "is", "the", "brand"]] * n,
              "image": [jpeg_bytes(fake_photo(500 + i)) for i in range(n)],
              "image_width": [64] * n, "image_height": [48] * n,
              "flickr_original_url": ["https://farm.example/x.jpg"] * n,
              "flickr_300k_url": ["https://farm.example/y.jpg"] * n,
              "answers": [["nikon"] * 8 + ["canon", "nikon d40"] for _ in range(n)],
              "image_classes": [["Camera"]] * n, "set_name": ["val"] * n,
              "ocr_tokens": [["NIKON", "D40"]] * n},
             {"image_id": S, "question_id": Value("int32"), "question": S,
              "question_tokens": List(S), "image": Image(), "image_width": Value("int32"),
              "image_height": Value("int32"), "flickr_original_url": S, "flickr_300k_url": S,
              "answers": List(S), "image_classes": List(S), "set_name": S,
              "ocr_tokens": List(S)}, d / "textvqa" / "data" / _shard("validation"))
    sources = {"vqav2": str(d / "VQAv2"), "gqa": str(d / "GQA"), "gqa_images": str(d / "GQA"),
               "textvqa": str(d / "textvqa")}
    # the official files vlm-evaluation indexes, holding the same questions in the same order
    # (images in the --images tree, as vlm-evaluation reads them)
    off = d / "official"
    off.mkdir(parents=True, exist_ok=True)
    mc = ["dog", "2", "yes", "red", "kitchen"]
    (off / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
        "data_subtype": "val2014", "license": {},
        "questions": [{"image_id": 262148 + i, "question": f"What is shown in picture {i}?",
                       "question_id": 262148000 + i} for i in range(n)]}))
    (off / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({
        "info": {}, "license": {}, "data_subtype": "val2014",
        "annotations": [{"question_type": "what is", "multiple_choice_answer": mc[i],
                         "answers": [{"answer": mc[i], "answer_confidence": "yes",
                                      "answer_id": j + 1} for j in range(10)],
                         "image_id": 262148 + i, "answer_type": "other",
                         "question_id": 262148000 + i} for i in range(n)]}))
    for i in range(n):
        _save_img(fake_photo(300 + i).convert("RGB"),
                  images / "coco" / "val2014" / f"COCO_val2014_{262148 + i:012d}.jpg")
    gqa = {}
    for i in range(n):
        gqa[f"20968{i}"] = {"imageId": gqa_img[i % 2], "question":
                            f"Is the table to the left of the chair? ({i})",
                            "answer": ["yes", "no", "left", "wood", "black"][i],
                            "fullAnswer": "Yes, it is.", "isBalanced": True}
    (off / "testdev_balanced_questions.json").write_text(json.dumps(gqa))
    for i, g in enumerate(gqa_img):
        _save_img(fake_photo(400 + i).convert("RGB"), images / "gqa" / "images" / f"{g}.jpg")
    sources["vqav2_official"] = sources["gqa_official"] = str(off)
    for key, base_id in (("refcoco", 1000), ("refcocoplus", 2000), ("refcocog", 3000)):
        rows = {k: [] for k in ("sent_ids", "file_name", "ann_id", "ref_id", "image_id", "split",
                                "sentences", "category_id", "raw_anns", "raw_image_info",
                                "raw_sentences", "image_path", "bbox", "captions",
                                "global_image_id", "anns_id")}
        for r in range(3):
            image_id = 580000 + base_id + r
            fname = f"COCO_train2014_{image_id:012d}.jpg"
            _save_img(fake_photo(image_id, size=(80, 60)), images / "coco" / "train2014" / fname)
            bbox = [4.0 + r, 6.0, 30.0, 20.0 + r]
            sents = [{"raw": f"Left object {r}", "sent": f"left object {r}", "sent_id": 10 * r + j,
                      "tokens": ["left", "object"]} for j in range(2)]
            vals = {"sent_ids": [s["sent_id"] for s in sents], "file_name": fname[:-4] + f"_{r}.jpg",
                    "ann_id": base_id + r, "ref_id": base_id + r, "image_id": image_id,
                    "split": "val", "sentences": sents, "category_id": 1,
                    "raw_anns": json.dumps({"bbox": bbox}),
                    "raw_image_info": json.dumps({"width": 80, "height": 60, "file_name": fname}),
                    "raw_sentences": json.dumps(sents), "image_path": f"coco/train2014/{fname}",
                    "bbox": bbox, "captions": [s["sent"] for s in sents],
                    "global_image_id": f"coco.{image_id}", "anns_id": str(base_id + r)}
            for k, v in vals.items():
                rows[k].append(v)
        _parquet(rows, {"sent_ids": List(I64), "file_name": S, "ann_id": I64, "ref_id": I64,
                        "image_id": I64, "split": S,
                        "sentences": List({"raw": S, "sent": S, "sent_id": I64,
                                           "tokens": List(S)}),
                        "category_id": I64, "raw_anns": S, "raw_image_info": S,
                        "raw_sentences": S, "image_path": S, "bbox": List(Value("float64")),
                        "captions": List(S), "global_image_id": S, "anns_id": S},
                 d / key / "data" / _shard("validation"))
        sources[key] = str(d / key)
    return sources


COIN_FIXTURE = {  # release dir -> (image dir, question, answer)
    "ScienceQA": ("ScienceQA/train", "Which of these states is farthest north?\nA. Ohio\nB. Maine"
                  "\nAnswer with the option's letter from the given choices directly.", "B"),
    "TextVQA": ("TextVQA/train_images", "what is written on the sign?\nAnswer the question "
                "using a single word or phrase.", "stop"),
    "ImageNet": ("ImageNet/train", "What is the object in the image?\nAnswer the question "
                 "using a single word or phrase.", "goldfish"),
    "GQA": ("GQA/images", "Is the cup on the table?\nAnswer the question using a single word "
            "or phrase.", "yes"),
    "VizWiz": ("VizWiz/train", "What is this?\nWhen the provided information is insufficient, "
               "respond with 'Unanswerable'.\nAnswer the question using a single word or "
               "phrase.", "soup can"),
    "Grounding": ("COCO2014/train2014", "Please provide the bounding box coordinate of the "
                  "region this sentence describes: man in red.", "[0.12, 0.2, 0.56, 0.9]"),
    "VQAv2": ("COCO2014/train2014", "How many dogs are there?\nAnswer the question using a "
              "single word or phrase.", "2"),
    "OCRVQA": ("OCR-VQA/images", "What is the title of this book?\nAnswer the question using "
               "a single word or phrase.", "Tiny Tales"),
}


def build_coin(d: Path, images: Path) -> dict[str, str]:
    root = d / "Instructions_Original"
    for k, (task, (img_dir, q, a)) in enumerate(COIN_FIXTURE.items()):
        for split in ("train", "test"):
            recs = []
            for i in range(3):
                rel = f"{img_dir}/{task.lower()}_{split}_{i}.jpg"
                _save_img(fake_photo(600 + 10 * k + i), images / rel)
                rec = {"id": f"{task}_{split}_{i}", "image": rel,
                       "conversations": [{"from": "human", "value": "<image>\n" + q}]}
                if split == "train":
                    rec["conversations"].append({"from": "gpt", "value": a})
                else:  # CoIN's test files, as its eval scripts read them
                    qid = 34602 + i if task == "TextVQA" else f"{task}_{split}_{i}"
                    if task == "ScienceQA":  # model_vqa_science: conversations[0] + answer
                        rec = {"question_id": qid, "image": rel,
                               "conversations": rec["conversations"], "answer": a}
                    else:  # model_vqa_cc_instruction: question_id, image, text; scorers: answer
                        rec = {"question_id": qid, "image": rel, "text": q, "answer": a}
                    # (TextVQA question ids are those of build_vl_eval's TextVQA val rows)
                recs.append(rec)
            (root / task).mkdir(parents=True, exist_ok=True)
            (root / task / f"{split}.json").write_text(json.dumps(recs))
    return {"coin": str(d)}


def build_emt(d: Path) -> dict[str, str]:
    from datasets import ClassLabel, Image

    def digit(i):
        from PIL import ImageDraw

        img = fake_photo(700 + i, size=(28, 28), mode="L")
        ImageDraw.Draw(img).text((9, 8), str(i % 10), fill=255)
        return img

    for split, n in (("train", 6), ("test", 4)):
        _parquet({"image": [digit(i) for i in range(n)], "label": [i % 10 for i in range(n)]},
                 {"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])},
                 d / "mnist" / "mnist" / _shard(split))
        _parquet({"img": [fake_photo(800 + i, size=(32, 32)) for i in range(n)],
                  "label": [i % 10 for i in range(n)]},
                 {"img": Image(), "label": ClassLabel(names=CIFAR10)},
                 d / "cifar10" / "plain_text" / _shard(split))
        _parquet({"img": [fake_photo(900 + i, size=(32, 32)) for i in range(n)],
                  "fine_label": [i % 5 for i in range(n)], "coarse_label": [i % 3 for i in range(n)]},
                 {"img": Image(), "fine_label": ClassLabel(names=CIFAR100_FINE),
                  "coarse_label": ClassLabel(names=CIFAR100_COARSE)},
                 d / "cifar100" / "cifar100" / _shard(split))
        for c, name in enumerate(("house finch", "robin", "triceratops")):
            for i in range(2):
                _save_img(fake_photo(1000 + 10 * c + i, size=(42, 42)),
                          d / "miniimagenet" / split / name / f"{split}_{i}.jpg")
    return {"mnist": str(d / "mnist"), "cifar10": str(d / "cifar10"),
            "cifar100": str(d / "cifar100"), "miniimagenet": str(d / "miniimagenet")}


def build_fixture_sources(d: str | Path) -> tuple[dict[str, str], str]:
    """Write every fixture under `d` (once; reused when `d/sources.json` exists)."""
    d = Path(d)
    images = d / "images"
    done = d / "sources.json"
    if done.exists():
        return json.loads(done.read_text()), str(images)
    sources = {}
    sources.update(build_nl(d / "nl"))
    sources.update(build_llava(d / "llava", images))
    sources.update(build_vl_eval(d / "vl", images))
    sources.update(build_coin(d / "coin", images))
    sources.update(build_emt(d / "emt"))
    done.write_text(json.dumps(sources))
    return sources, str(images)
