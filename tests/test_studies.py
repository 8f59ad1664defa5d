"""The study scripts (studies/*.py) and the library pieces they added.

- every study's --help runs and documents its options;
- every paper preset validates with --dry-run against a fake data root and fake local model
  dirs (nothing is downloaded: HF_HUB_OFFLINE=1), and a missing data file is reported;
- CoIN instruction variants (mllmcl_ray/data/instructions.py);
- CLIP zero-shot accuracy (mllmcl_ray/eval/clip_zero_shot.py) on a tiny CLIP;
- the zero-shot evaluation after alignment (eval.zero_shot) and EMT's epochs-as-tasks rows,
  end to end on a tiny model, down to the report's EMT figure x-axis.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("scale_pythia", "mitigation", "coin", "emt")


def load_study(name: str):
    spec = importlib.util.spec_from_file_location(f"_study_{name}", REPO / "studies" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------------------
HELP_OPTIONS = {
    "scale_pythia": ["--scales", "--methods", "--recipes"],
    "mitigation": ["--variants", "--methods", "--alphas", "--model", "--recipes", "lora",
                   "alpha", "Table 2", "Table 3"],
    "coin": ["--order", "--instructions", "--volumes", "--experts", "--methods", "--baselines",
             "--judge", "alphabet", "10type", "MAA", "BWT", "ray job submit"],
    "emt": ["--sets", "--train-set", "--epochs", "--methods", "--clip-prompt", "--no-clip",
            "epoch-1", "trained_task_index", "ray job submit"],
}


@pytest.mark.parametrize("name", STUDIES)
def test_help_documents_options(name, capsys):
    mod = load_study(name)
    with pytest.raises(SystemExit) as e:
        mod.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ["--preset", "--dry-run", "--data-root", "--model-root", *HELP_OPTIONS[name]]:
        assert opt in out, f"{name} --help does not mention {opt}"


# ---------------------------------------------------------------------------------------
# paper presets: --dry-run against a fake layout, offline
# ---------------------------------------------------------------------------------------
COIN_TASKS = ("ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCR-VQA")


@pytest.fixture()
def fake_root(tmp_path, monkeypatch):
    """Empty but correctly named data files (docs/data.md) and model dirs named like hub ids."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    data, models = tmp_path / "data", tmp_path / "models"
    files = ["continual/align.json"] + [f"continual/{t}.json" for t in ("instruct", "vqa", "ocr", "ref")]
    files += [f"eval/{n}_slim.json" for n in ("vqav2", "gqa", "textvqa", "refcoco")]
    files += [f"nl/{n}.jsonl" for n in ("lambada", "arc_easy", "arc_challenge", "winogrande", "wsc")]
    files += [f"Instructions/{t}/{s}.json" for t in COIN_TASKS for s in ("train", "test")]
    files += [f"emt/{t}/{s}.json" for t in ("mnist", "cifar10", "cifar100", "miniimagenet")
              for s in ("train", "test")]
    # one valid record per file (validation reads the first training record and every
    # eval record): text-only, with every scorer's reference field
    rec = {"id": "r0", "conversations": [{"from": "human", "value": "Q?"},
                                         {"from": "gpt", "value": "red"}],
           "answers": ["red"], "answer": "A", "label": "red", "bbox": [0.1, 0.1, 0.5, 0.5]}
    nl = {"lambada": {"text": "the cat sat"}, "arc": {"question": "q", "choices": ["a", "b"], "label": 0},
          "winogrande": {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "1"},
          "wsc": {"text": "The cat sat. It ran.", "pronoun": "It", "pronoun_loc": 13,
                  "options": ["The cat", "the dog"], "answer": 0}}
    for f in files:
        p = data / f
        p.parent.mkdir(parents=True, exist_ok=True)
        if f.endswith(".jsonl"):
            kind = next(k for k in nl if Path(f).stem.startswith(k))
            p.write_text(json.dumps(nl[kind]) + "\n")
        else:
            p.write_text(json.dumps([rec]))
    (data / "images").mkdir()
    for m, mt in (("pythia-160m-deduped", "gpt_neox"), ("vicuna-7b-v1.5", "llama"),
                  ("clip-vit-large-patch14-336", "clip")):
        (models / m).mkdir(parents=True)
        (models / m / "config.json").write_text(json.dumps({"model_type": mt}))
    return data, models, tmp_path / "out"


DRY = {  # study: (extra args, a file whose absence must be reported)
    "scale_pythia": (["--scales", "pythia-160m", "--seeds", "0"], "eval/gqa_slim.json"),
    "mitigation": (["--variants", "all"], "continual/ocr.json"),
    "coin": (["--instructions", "original,10type", "--volumes", "0.4,1.0", "--order", "alphabet",
              "--methods", "lora,moelora,ewc,lwf", "--experts", "2,4"], "Instructions/VizWiz/test.json"),
    "emt": (["--train-set", "mnist,cifar10", "--epochs", "2"], "emt/cifar100/test.json"),
}


@pytest.mark.parametrize("name", STUDIES)
def test_paper_dry_run(name, fake_root, capsys):
    data, models, out = fake_root
    mod = load_study(name)
    extra, victim = DRY[name]
    argv = ["--preset", "paper", "--data-root", str(data), "--model-root", str(models),
            "--out", str(out), "--dry-run", *extra]
    rc = mod.main(argv)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "run configs valid" in text and "MISSING" not in text
    assert "(local dir)" in text and "hub id" not in text
    assert not (out / "cache").exists()  # a dry run writes nothing (no rewritten prompts)
    (data / victim).unlink()
    rc = mod.main(argv)
    text = capsys.readouterr().out
    assert rc == 2  # a missing data file fails the dry run (the user-error status)
    assert "ERROR" in text and f"{data / victim} does not exist" in text


def test_study_grids():
    mit = load_study("mitigation")
    grid = mit.method_grid(["methods", "lora", "alpha"], list(mit.METHODS), [0.001, 0.01, 0.1])
    labels = [label for label, _ in grid]
    assert labels.count("naive") == 1 and "lora (1/2 full rank, rsLoRA)" not in labels  # = lora
    assert sum(m["name"] == "lora" for _, m in grid) == 6  # lora + 5 other Table 2 rows
    assert {m["params"]["soft_targets"]["alpha"] for _, m in grid if m["name"] == "soft_targets"} \
        == {0.001, 0.01, 0.1}
    qkv = [m for label, m in grid if "KQV" in label][0]["params"]["lora"]
    assert qkv == {"rank": 0.5, "alpha": 8.0, "use_rslora": True, "target": "attention_qkv"}

    coin = load_study("coin")
    ms = coin.method_configs(["lora", "moelora", "ewc", "lwf"], [1, 2, 8], 128, 1000)
    assert [m["name"] for m in ms] == ["moelora", "moelora", "moelora", "moelora+ewc", "moelora+lwf"]
    assert ms[0]["params"]["moelora"] == {"num_experts": 1, "rank": 128, "alpha": 256.0,
                                          "use_rslora": False, "train_projector": False}
    assert coin.resolve_order("alphabet", list(coin.PAPER_TASKS)) == [
        "GQA", "Grounding", "ImageNet", "OCR-VQA", "ScienceQA", "TextVQA", "VizWiz", "VQAv2"]
    assert coin.resolve_order("vqa,ocr", list(coin.MICRO_TASKS)) == ["vqa", "ocr"]
    with pytest.raises(ValueError):
        coin.resolve_order("vqa,nope", list(coin.MICRO_TASKS))
    assert coin.level_study("paper", "original", 1.0) == "coin"
    assert coin.level_study("alphabet", "10type", 0.4) == "coin-alphabet-10type-vol0.4"

    emt = load_study("emt")
    from mllmcl_ray.config import DataSource, EvalSet

    tasks = emt.epoch_tasks(DataSource("t.json"), [EvalSet("a"), EvalSet("b")], 3)
    assert [t.name for t in tasks] == ["epoch-1", "epoch-2", "epoch-3"]
    assert [len(t.eval) for t in tasks] == [2, 0, 0] and all(t.train[0].path == "t.json" for t in tasks)


# ---------------------------------------------------------------------------------------
# CoIN instruction variants
# ---------------------------------------------------------------------------------------
def test_instruction_templates():
    from mllmcl_ray.data import instructions as I

    for t in I.TASK_TYPES:
        assert I.templates(t, "original") == (I.ORIGINAL[t],)
        assert I.templates(t, "diverse") == (I.DIVERSE[t],)
        ten = I.templates(t, "10type")
        assert len(ten) == 10 and len(set(ten)) == 10, t
    assert I.task_type("ocrvqa") == "OCR-VQA" and I.task_type("vqa v2") == "VQAv2"
    with pytest.raises(ValueError):
        I.task_type("MMLU")
    with pytest.raises(ValueError):
        I.templates("GQA", "20type")
    # the variants differ where App. H says they do
    assert I.DIVERSE["GQA"] != I.ORIGINAL["GQA"] and I.DIVERSE["VQAv2"] == I.ORIGINAL["VQAv2"]


def _rec(i, q, task="GQA"):
    return {"id": f"{task}-{i}", "image": f"img/{i}.png", "conversations": [
        {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "yes"}]}


def test_instruction_rewrite_records():
    from mllmcl_ray.data import instructions as I

    rec = _rec(0, "Is it red?\nAnswer the question using a single word or phrase.")
    assert I.rewrite_record(rec, "GQA", "original", 0) is rec
    div = I.rewrite_record(rec, "GQA", "diverse", 0)
    assert div["conversations"][0]["value"] == \
        "<image>\nIs it red?\nRespond to the question briefly, using only one word or a phrase."
    assert rec["conversations"][0]["value"].endswith("single word or phrase.")  # not mutated
    assert div["conversations"][1] == rec["conversations"][1] and div["image"] == rec["image"]
    # ScienceQA: typographic or plain apostrophe, any case
    sqa = _rec(1, "Which one?\nA. x\nB. y\nanswer with the option’s letter from the given "
                  "choices directly.", "ScienceQA")
    new = I.rewrite_record(sqa, "ScienceQA", "10type", 3)["conversations"][0]["value"]
    assert new.endswith(".") and I.choose_template("ScienceQA", "10type", 3, "ScienceQA-1") in new
    # 10type: seeded per record id, order-independent, uses all 10 templates over many records
    recs = [_rec(i, "Q?\nAnswer the question using a single word or phrase.") for i in range(300)]
    a = [I.rewrite_record(r, "GQA", "10type", 7)["conversations"][0]["value"] for r in recs]
    b = [I.rewrite_record(r, "GQA", "10type", 7)["conversations"][0]["value"]
         for r in reversed(recs)][::-1]
    c = [I.rewrite_record(r, "GQA", "10type", 8)["conversations"][0]["value"] for r in recs]
    assert a == b and a != c
    used = {t for t in I.TEN_TYPE["GQA"] if any(t + "." in v for v in a)}
    assert used == set(I.TEN_TYPE["GQA"])
    assert all(v.startswith("<image>\nQ?\n") and "single word or phrase." not in v for v in a)
    # a prompt without the original template gets the new one appended as its last line
    emt = _rec(2, "What is the object in the image? Please only answer a single object in a, b.")
    out = I.rewrite_record(emt, "ImageNet", "diverse", 0)["conversations"][0]["value"]
    assert out.endswith("\nExpress your answer in a single word or a short, descriptive phrase.")


def test_instruction_files_and_run_config(tmp_path):
    from mllmcl_ray.config import DataSource, EvalSet, RunConfig, TaskSpec
    from mllmcl_ray.data import instructions as I
    from mllmcl_ray.data.instruct import iter_raw, validate_record

    src = tmp_path / "GQA" / "train.json"
    src.parent.mkdir()
    recs = [_rec(i, "Q?\nAnswer the question using a single word or phrase.") for i in range(20)]
    src.write_text(json.dumps(recs))
    test = tmp_path / "GQA" / "test.json"
    test.write_text(json.dumps(recs[:5]))
    cfg = RunConfig(tasks=[
        TaskSpec("gqa", [DataSource(str(src), image_root="/imgs", fraction=0.5)],
                 [EvalSet("gqa", str(test), image_root="/imgs", kind="exact", max_samples=3)]),
        TaskSpec("instruct", [DataSource(str(src))])])
    cache = tmp_path / "cache"
    I.apply_instruction_variant(cfg, {"gqa": "GQA", "instruct": None}, "10type", 0, cache)
    tr, ev = cfg.tasks[0].train[0], cfg.tasks[0].eval[0]
    assert Path(tr.path).parent.parent.parent == cache and tr.path != str(src)
    assert (tr.image_root, tr.fraction, ev.image_root, ev.kind, ev.max_samples) == \
        ("/imgs", 0.5, "/imgs", "exact", 3)
    assert cfg.tasks[1].train[0].path == str(src)  # no task type: prompts kept
    out = json.loads(Path(tr.path).read_text())
    assert [r["id"] for r in out] == [r["id"] for r in recs]
    assert [r["conversations"][0]["value"] for r in out] == \
        [I.rewrite_record(r, "GQA", "10type", 0)["conversations"][0]["value"] for r in recs]
    assert len([validate_record(r, Path(tr.path), i) for i, r in iter_raw(tr.path)]) == 20
    mtime = Path(tr.path).stat().st_mtime_ns
    again = I.variant_path(src, "GQA", "10type", 0, cache)  # cached: not rewritten
    assert str(again) == tr.path and again.stat().st_mtime_ns == mtime
    assert I.variant_path(src, "GQA", "original", 0, cache) == src
    assert not list(cache.rglob(".*.tmp"))


# ---------------------------------------------------------------------------------------
# CLIP zero-shot
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIPModel (both towers) with the micro-style BPE tokenizer, saved to a
    dir, and 6 solid-colour images."""
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel

    from mllmcl_ray.models.build import make_image_processor
    from mllmcl_ray.models.tokenizers import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("clip")
    tok = train_bpe_tokenizer(["a photo of a red green blue thing"] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=16, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=16, patch_size=8),
                     projection_dim=8)
    model = CLIPModel(cfg).eval()
    proc = make_image_processor(16)
    clip_dir = root / "clip"
    model.save_pretrained(str(clip_dir))
    tok.save_pretrained(str(clip_dir))
    proc.save_pretrained(str(clip_dir))
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    records = []
    for i, c in enumerate(["red", "green", "blue", "red", "green", "blue"]):
        p = root / f"{i}.png"
        Image.new("RGB", (16, 16), colours[c]).save(p)
        records.append({"id": str(i), "image": str(p), "label": c,
                        "labels": ["red", "green", "blue"]})
    return {"model": model, "tok": tok, "proc": proc, "dir": clip_dir, "records": records,
            "root": root}


def test_clip_zero_shot_known_answer(tiny_clip, monkeypatch):
    """Controlled towers: text features one-hot per class prompt, image features one-hot of
    the image's dominant channel; 2 of 6 labels are deliberately wrong -> 4/6."""
    import torch

    from mllmcl_ray.eval.clip_zero_shot import clip_zero_shot, clip_zero_shot_accuracy

    model, tok = tiny_clip["model"], tiny_clip["tok"]
    seen = {}

    def text_features(input_ids, attention_mask):
        seen["ids"], seen["mask"] = input_ids, attention_mask
        return torch.eye(input_ids.shape[0])

    def image_features(pixel_values):
        return torch.nn.functional.one_hot(pixel_values.mean((2, 3)).argmax(-1), 3).float()

    monkeypatch.setattr(model, "get_text_features", text_features)
    monkeypatch.setattr(model, "get_image_features", image_features)
    recs = [dict(r) for r in tiny_clip["records"]]
    recs[3]["label"], recs[5]["label"] = "green", "red"
    labels = ["red", "green", "blue"]
    res = clip_zero_shot(model, recs, labels, tokenizer=tok, image_processor=tiny_clip["proc"],
                         batch_size=4)
    assert res.predictions == [0, 1, 2, 0, 1, 2] and res.n == 6
    assert res.accuracy == pytest.approx(4 / 6)
    assert clip_zero_shot_accuracy(model, tiny_clip["records"], labels, tokenizer=tok,
                                   image_processor=tiny_clip["proc"]) == 1.0
    # every prompt ends with the eos token the micro tokenizer does not add itself
    ids, mask = seen["ids"], seen["mask"]
    for row, m in zip(ids, mask):
        assert int(row[int(m.sum()) - 1]) == tok.eos_token_id
    assert tok.decode(ids[0][: int(mask[0].sum()) - 1]) == "a photo of a red"
    with pytest.raises(ValueError):
        clip_zero_shot(model, recs, labels, prompt="a photo", tokenizer=tok,
                       image_processor=tiny_clip["proc"])
    with pytest.raises(ValueError):  # a label outside the class set
        clip_zero_shot(model, [dict(recs[0], label="pink")], labels, tokenizer=tok,
                       image_processor=tiny_clip["proc"])


def test_clip_zero_shot_rows_from_dir(tiny_clip, tmp_path):
    """From a saved dir (real towers, random weights): rows with every schema column,
    written once (a rerun skips), and the report's EMT figure draws the CLIP line."""
    from mllmcl_ray.config import EvalSet
    from mllmcl_ray.eval.clip_zero_shot import clip_zero_shot_accuracy, evaluate_clip_zero_shot
    from mllmcl_ray.results import RESULT_SCHEMA, ResultStore

    acc = clip_zero_shot_accuracy(str(tiny_clip["dir"]), tiny_clip["records"],
                                  ["red", "green", "blue"])
    assert 0.0 <= acc <= 1.0
    data = tmp_path / "colours.json"
    data.write_text(json.dumps([{**r, "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": r["label"]}]}
        for r in tiny_clip["records"]]))
    store = ResultStore(tmp_path / "results")
    meta = {"run_id": "clip-x", "study": "emt", "model": "tiny", "scale": 0.0,
            "method": "clip_zero_shot", "method_params": "{}", "seed": 0}
    es = EvalSet("colours", str(data), kind="classification", max_samples=None)
    rows = evaluate_clip_zero_shot(str(tiny_clip["dir"]), [es], store, meta, log=lambda s: None)
    assert len(rows) == 1 and set(rows[0]) == set(RESULT_SCHEMA.names)
    r = rows[0]
    assert (r["metric"], r["split"], r["trained_task_index"], r["eval_task"], r["dataset"], r["n"]) \
        == ("clip_zero_shot", "emt", 1, "colours", "colours", 6)
    assert r["value"] == pytest.approx(acc)
    assert evaluate_clip_zero_shot(str(tiny_clip["dir"]), [es], store, meta) == []
    assert len(store.read()) == 1


# ---------------------------------------------------------------------------------------
# eval.zero_shot and EMT's epochs as tasks, end to end on a tiny model
# ---------------------------------------------------------------------------------------
def test_zero_shot_plan_and_seen_tasks():
    from mllmcl_ray.config import DataSource, EvalSet, RunConfig, TaskSpec
    from mllmcl_ray.runner import seen_vl_tasks
    from mllmcl_ray.train.task import plan_steps

    cfg = RunConfig(align=[DataSource("cap.json")], tasks=[
        TaskSpec("a", [DataSource("a.json")], [EvalSet("a")]),
        TaskSpec("b", [DataSource("b.json")], [EvalSet("b")])])
    assert [s.evaluate for s in plan_steps(cfg)] == [False, True, True]
    cfg.eval.zero_shot = True
    steps = plan_steps(cfg)
    assert [s.evaluate for s in steps] == [True, True, True]
    assert [n for _, n, _ in seen_vl_tasks(cfg, steps[0])] == ["a", "b"]  # after alignment: all
    assert [n for _, n, _ in seen_vl_tasks(cfg, steps[1])] == ["a"]


@pytest.mark.timeout(300)
def test_emt_epochs_rows_and_figure(tmp_path, tiny_clip):
    """Alignment → zero-shot EMT (task 1) → 2 epochs (tasks 2, 3), every set after each; the
    EMT figure reads "1: zero_shot", "2: epoch-1", "3: epoch-2" with the CLIP line."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from spine_world import make_tokenizer, tiny_spec

    from mllmcl_ray.config import (DataSource, EvalSet, MethodConfig, RunConfig, StageConfig,
                                   StagesConfig, TrainerConfig)
    from mllmcl_ray.eval.clip_zero_shot import ClipZeroShot, clip_zero_shot_rows
    from mllmcl_ray.report.figures import fig_emt
    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.runner import results_dir, run_and_evaluate

    emt = load_study("emt")
    torch.set_num_threads(1)
    tok_dir = tmp_path / "tok"
    make_tokenizer(tok_dir)
    from PIL import Image

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    (tmp_path / "img").mkdir()
    for c, rgb in colours.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / "img" / f"{c}.png")
    q = "<image>\nWhat is the object in the image? Please only answer a single object in red, green, blue."

    def write(name, n):
        recs = [{"id": f"{name}{i}", "image": f"{c}.png", "label": c, "labels": list(colours),
                 "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": c}]}
                for i, c in zip(range(n), list(colours) * n)]
        (tmp_path / f"{name}.json").write_text(json.dumps(recs))
        return str(tmp_path / f"{name}.json")

    img = str(tmp_path / "img")
    sets = [EvalSet(n, write(n, 3), image_root=img, kind="classification", max_samples=None,
                    max_new_tokens=2) for n in ("setA", "setB")]
    train = DataSource(write("train", 8), image_root=img)
    tiny = StageConfig(lr=1e-3, global_batch_size=4, per_device_batch_size=4, max_steps=1,
                       warmup_ratio=0.0, schedule="constant", train="projector")
    cfg = RunConfig(name="emt", model=tiny_spec(tok_dir), output_dir=str(tmp_path / "out"),
                    stages=StagesConfig(align=tiny, finetune=StageConfig(**{**tiny.__dict__,
                                                                            "train": "projector+llm"})),
                    align=[DataSource(write("cap", 4), image_root=img)],
                    tasks=emt.epoch_tasks(train, sets, 2), method=MethodConfig("linear"),
                    trainer=TrainerConfig(num_workers=0, log_every=100, feature_cache=False))
    cfg.eval.zero_shot = True
    cfg.eval.nl = False
    cfg.eval.batch_size = 8
    run_and_evaluate(cfg, progress=False, study="emt", log=lambda s: None)
    store = ResultStore(results_dir(cfg))
    clip = clip_zero_shot_rows({"run_id": "clip", "study": "emt", "model": "tiny-gpt_neox",
                                "scale": 0.0, "method": "clip_zero_shot", "method_params": "{}",
                                "seed": 0}, "setA", ClipZeroShot(0.5, 3, ["r", "g", "b"]),
                               clip="c", prompt="a {label}", eval_set_hash="h")
    store.append(clip)
    df = store.read()
    rows = df[df["metric"] == "emt_exact"]
    got = sorted(set(zip(rows["trained_task_index"], rows["trained_task"], rows["dataset"])))
    assert got == [(1, "zero_shot", "setA"), (1, "zero_shot", "setB"), (2, "epoch-1", "setA"),
                   (2, "epoch-1", "setB"), (3, "epoch-2", "setA"), (3, "epoch-2", "setB")]
    assert set(rows["split"]) == {"emt"} and set(rows["eval_task"]) == {"epoch-1"}
    zero = rows[rows["trained_task_index"] == 1]["checkpoint_id"]
    assert all(c.endswith("02-align") for c in zero)  # the aligned model, before fine-tuning
    fig = fig_emt(df)
    ax = fig.layout.xaxis
    assert list(ax.ticktext) == ["1: zero_shot", "2: epoch-1", "3: epoch-2"]
    assert any((t.meta or {}).get("kind") == "clip_zero_shot" for t in fig.data)
