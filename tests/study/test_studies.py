"""The study scripts (studies/*.py: StudySpecs) and the library pieces they added.

- every study's --help runs and documents its options and reproductions;
- every paper preset and every named reproduction validates with --dry-run against a fake
  data root and fake local model dirs (nothing is downloaded: HF_HUB_OFFLINE=1), a missing
  data file is reported, a missing data root is one clear error line (exit 2);
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

REPO = Path(__file__).resolve().parents[2]
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
            "--models", "--init", "--start", "eval_every_epoch", "trained_task_index", "ray job submit"],
}


@pytest.mark.parametrize("name", STUDIES)
def test_help_documents_options(name, capsys):
    mod = load_study(name)
    with pytest.raises(SystemExit) as e:
        mod.SPEC.parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ["--preset", "--dry-run", "--data-root", "--model-root", "--reproduce", "--tracker",
                "--debug", *HELP_OPTIONS[name], *(r.name for r in mod.SPEC.reproductions)]:
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
           "answers": ["red"] * 10, "answer": "A", "label": "red", "bbox": [0.1, 0.1, 0.5, 0.5],
           "ocr_tokens": ["red"], "labels": ["red", "blue"]}
    nl = {"lambada": {"context": "the cat", "target": "sat"},
          "arc": {"question": "q", "choices": ["a", "b"], "label": 0},
          "winogrande": {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "1"},
          "wsc": {"text": "The cat sat. It ran.", "pronoun": "It", "pronoun_loc": 13,
                  "options": ["The cat", "the dog"], "label": 0}}
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
    rc = mod.SPEC.main(argv)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "run configs valid" in text and "MISSING" not in text
    assert "(local dir)" in text and "hub id" not in text
    assert not (out / "cache").exists()  # a dry run writes nothing (no rewritten prompts)
    (data / victim).unlink()
    rc = mod.SPEC.main(argv)
    text = capsys.readouterr().out
    assert rc == 2  # a missing data file fails the dry run (the user-error status)
    assert "ERROR" in text and f"{data / victim} does not exist" in text
    assert "ERROR" in text and f"{data / victim} does not exist" in text


def test_paper_emt_starts_from_llava_hf_offline(fake_root, capsys, monkeypatch):
    """EMT §5 fine-tunes LLaVA: the paper preset's default start (--start instruct) is the
    public llava-hf LLaVA-1.5 of --model (vicuna-1.5-7b → llava-hf/llava-1.5-7b-hf; with
    --model-root the dir named like it), no alignment in the runs; a dry run names it and
    loads nothing (HF_HUB_OFFLINE, and no checkpoint loader may be called)."""
    import mllmcl_ray.models.build as B
    from mllmcl_ray.config import ConfigError

    def no_load(*a, **k):
        raise AssertionError("a dry run must not load (or download) a checkpoint")

    monkeypatch.setattr(B, "load_hf_llava", no_load)
    monkeypatch.setattr(B, "build_mllm", no_load)
    data, models, out = fake_root
    emt = load_study("emt")
    cfg = emt.base(context(emt, []))
    assert cfg.model.init == "llava-hf/llava-1.5-7b-hf" and cfg.align == []
    assert cfg.model.template == "vicuna_v1"  # LLaVA-1.5's conversation (conv_vicuna_v1)
    local = emt.base(context(emt, ["--model-root", str(models)]))
    assert local.model.init == str(models / "llava-1.5-7b-hf")
    aligned = emt.base(context(emt, ["--start", "aligned"]))
    assert aligned.model.init is None and [Path(a.path).name for a in aligned.align] == ["align.json"]
    assert [Path(a.path).name for a in emt.base(context(emt, ["--start", "aligned", "--align", "a2.json"])).align] == ["a2.json"]
    with pytest.raises(ConfigError, match="--align 'a2.json'.*needs --start aligned"):
        emt.base(context(emt, ["--align", "a2.json"]))
    with pytest.raises(ConfigError, match="no instruction-tuned LLaVA checkpoint for model 'llama-2-7b'"):
        emt.base(context(emt, ["--model", "llama-2-7b"]))
    assert emt.base(context(emt, ["--model", "llama-2-7b", "--init", "/x"])).model.init == "/x"
    rc = emt.SPEC.main(["--preset", "paper", "--data-root", str(data), "--model-root", str(models),
                        "--out", str(out), "--dry-run"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"[emt] start: {models / 'llava-1.5-7b-hf'}: the public instruction-tuned LLaVA-1.5" in text
    assert "would make" not in text  # nothing is made here: the checkpoint is the public one
    assert not (out / "runs").exists() and not (out / "cache").exists()


def context(mod, argv):
    """The StudyContext the study's functions see for `argv` (paper preset, fake paths)."""
    from mllmcl_ray.study.cli import make_context

    return make_context(mod.SPEC, mod.SPEC.parse_args(["--preset", "paper", "--data-root", "/nonexistent",
                                                       *argv]), log=lambda s: None)


def test_study_grids():
    from mllmcl_ray.config import ConfigError

    mit = load_study("mitigation")
    ms = mit.grid(context(mit, ["--variants", "all", "--methods", "all"]))["method"]
    assert sum(m["name"] == "naive" for m in ms) == 1  # naive once, though three variants name it
    assert sum(m["name"] == "lora" for m in ms) == 6  # lora (= Table 2's rsLoRA row) + 5 other rows
    assert {m["params"]["soft_targets"]["alpha"] for m in ms if m["name"] == "soft_targets"} \
        == {0.001, 0.01, 0.1}
    qkv = [m for m in ms if m["params"].get("lora", {}).get("target") == "attention_qkv"]
    assert [m["params"]["lora"] for m in qkv] == [
        {"rank": 0.5, "alpha": 8.0, "use_rslora": True, "target": "attention_qkv"}]
    fig3a = mit.grid(context(mit, []))["method"]  # the default reproduction: Fig. 3a's four
    assert [m["name"] for m in fig3a] == ["naive", "lora", "msgm", "soft_targets"]

    coin = load_study("coin")
    ctx = context(coin, ["--methods", "lora,moelora,ewc,lwf", "--experts", "1,2,8"])
    ms = coin.grid(ctx)["method"]
    # CoIN's LoRA is MoELoRA with one expert: "moelora" with 1 expert is the same config
    assert [m["name"] for m in ms] == ["moelora", "moelora", "moelora", "moelora+ewc", "moelora+lwf"]
    assert ms[0]["params"]["moelora"] == {"num_experts": 1, "rank": 128, "alpha": 256.0,
                                          "use_rslora": False, "train_projector": False}
    assert [m["params"]["moelora"]["num_experts"] for m in ms[:3]] == [1, 2, 8]
    assert ms[3]["params"]["ewc"] == {"lam": 0.1, "fisher_samples": 1000}
    alpha = context(coin, ["--order", "alphabet"])
    assert alpha.order("order", list(alpha.preset.coin_tasks())) == [
        "GQA", "Grounding", "ImageNet", "OCR-VQA", "ScienceQA", "TextVQA", "VizWiz", "VQAv2"]
    assert [t.name for t in coin.base(context(coin, ["--order", "vqav2,gqa"])).tasks] == ["VQAv2", "GQA"]
    with pytest.raises(ConfigError, match="--order"):
        coin.base(context(coin, ["--order", "GQA,nope"]))
    assert coin.level(context(coin, []), "original", 1.0) == "coin"
    assert coin.level(alpha, "10type", 0.4) == "coin-alphabet-10type-vol0.4"

    emt = load_study("emt")
    from mllmcl_ray.config import DataSource, EvalSet

    task = emt.finetune_task(DataSource("t.json"), [EvalSet("a"), EvalSet("b")])
    assert task.eval_every_epoch and [e.name for e in task.eval] == ["a", "b"]
    assert task.train[0].path == "t.json"


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
    # every column but `epoch`, which a row may omit (results.RESULT_DEFAULTS: 0)
    assert len(rows) == 1 and set(rows[0]) | {"epoch"} == set(RESULT_SCHEMA.names)
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
    """Alignment → zero-shot EMT (task 1) → 2 epochs of ONE task (2 steps each, one lr
    schedule), every set after each epoch (rows epoch 1, then the task's end: epoch 0 = the
    epoch-2 model); the EMT figure's x reads 0 (zero-shot), 1, 2 with the CLIP line."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parents[1]))
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
    two_epochs = {**tiny.__dict__, "train": "projector+llm", "max_steps": None, "epochs": 2.0}
    cfg = RunConfig(name="emt", model=tiny_spec(tok_dir), output_dir=str(tmp_path / "out"),
                    stages=StagesConfig(align=tiny, finetune=StageConfig(**two_epochs)),
                    align=[DataSource(write("cap", 4), image_root=img)],
                    tasks=[emt.finetune_task(train, sets)], method=MethodConfig("linear"),
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
    got = sorted(set(zip(rows["trained_task_index"], rows["trained_task"], rows["epoch"],
                         rows["dataset"])))
    assert got == [(1, "zero_shot", 0, "setA"), (1, "zero_shot", 0, "setB"),
                   (2, "finetune", 0, "setA"), (2, "finetune", 0, "setB"),
                   (2, "finetune", 1, "setA"), (2, "finetune", 1, "setB")]
    assert set(rows["split"]) == {"emt"} and set(rows["eval_task"]) == {"finetune"}
    zero = rows[rows["trained_task_index"] == 1]["checkpoint_id"]
    assert all(c.endswith("02-align") for c in zero)  # the aligned model, before fine-tuning
    after1 = rows[rows["epoch"] == 1]["checkpoint_id"]
    assert all(c.endswith("epoch01") for c in after1)  # inside the task, after epoch 1
    fig = fig_emt(df)
    ax = fig.layout.xaxis
    assert list(ax.ticktext) == ["0", "1", "2"] and ax.title.text == "epoch"
    assert any((t.meta or {}).get("kind") == "clip_zero_shot" for t in fig.data)


# ---------------------------------------------------------------------------------------
# StudySpec: reproductions, user errors, the method table, presets, import arrows
# ---------------------------------------------------------------------------------------
ALL_REPROS = [(name, r.name) for name in STUDIES for r in load_study(name).SPEC.reproductions]


@pytest.mark.parametrize("name,repro", ALL_REPROS)
def test_every_reproduction_validates_on_paper(name, repro, fake_root, capsys):
    """Each named reproduction builds valid run configs on the paper preset; only data the
    fake root lacks would fail it (every file docs/data.md names is there)."""
    data, models, out = fake_root
    for m in ("pythia-410m-deduped", "pythia-1b-deduped", "pythia-1.4b-deduped", "pythia-2.8b-deduped",
              "pythia-1.4b-deduped-synthetic-instruct", "phi-2", "Llama-2-7b-hf"):
        (models / m).mkdir(exist_ok=True)
        mt = "phi" if m.startswith("phi") else "llama" if m.startswith("Llama") else "gpt_neox"
        (models / m / "config.json").write_text(json.dumps({"model_type": mt}))
    rc = load_study(name).SPEC.main(["--preset", "paper", "--data-root", str(data), "--model-root",
                                     str(models), "--out", str(out), "--dry-run", "--reproduce", repro])
    text = capsys.readouterr().out
    if (name, repro) == ("coin", "table3"):  # its judge is a hub id, and the hub is offline here
        assert rc == 2 and ("eval.judge: hub id 'Qwen/Qwen1.5-32B-Chat' is not in the local "
                            "cache") in text, text
        return
    assert rc == 0, text
    assert "run configs valid" in text and "MISSING" not in text and "hub id" not in text


@pytest.mark.parametrize("name", STUDIES)
def test_paper_without_data_is_one_clear_line(name, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # hub ids: fetched at run time
    mod = load_study(name)
    rc = mod.SPEC.main(["--preset", "paper", "--dry-run", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"{name}: error: --preset paper needs --data-root DIR (its layout: docs/data.md)\n"
    from mllmcl_ray.config import ConfigError

    # --debug: the traceback too
    rc = mod.SPEC.main(["--preset", "paper", "--dry-run", "--debug", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "--data-root" in err
    # no data root at all: each run names its missing file, then the data check (the
    # preflight) stops with one line saying how to make the root, exit 2
    rc = mod.SPEC.main(["--preset", "paper", "--dry-run", "--data-root", str(tmp_path / "none"),
                        "--out", str(tmp_path)])
    cap = capsys.readouterr()
    assert rc == 2 and "ERROR" in cap.out and str(tmp_path / "none") in cap.out
    assert cap.err == (f"{name}: error: data root {tmp_path / 'none'} is not a directory; run "
                       f"`mllmcl data prepare all --root {tmp_path / 'none'}` first\n")


BAD_ARGS = [
    ("scale_pythia", ["--methods", "naive,nope"], "--methods: unknown value(s) nope"),
    ("scale_pythia", ["--scales", "pythia-9b"], "unknown paper model 'pythia-9b'"),
    ("scale_pythia", ["--recipes", "mixed"], "--recipes: unknown value(s) mixed"),
    ("scale_pythia", ["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
    ("scale_pythia", ["--set", "stages.finetune.lrr=1"], "finetune has no key 'lrr'"),
    ("mitigation", ["--variants", "everything"], "--variants: unknown value(s) everything"),
    ("mitigation", ["--variants", "alpha", "--alphas", "0.1,big"], "--alphas '0.1,big': expected comma-separated numbers"),
    ("coin", ["--volumes", "0.4,1.5"], "--volumes '0.4,1.5': fractions must be in (0, 1]"),
    ("coin", ["--order", "GQA,GQA"], "--order 'GQA,GQA': tasks must be distinct names"),
    ("coin", ["--instructions", "20type"], "--instructions: unknown value(s) 20type"),
    ("coin", ["--experts", "two", "--methods", "moelora"], "--experts 'two': expected comma-separated integers"),
    ("emt", ["--epochs", "0"], "--epochs must be ≥ 1, got 0"),
    ("emt", ["--clip-prompt", "a photo"], "--clip-prompt 'a photo' must contain {label}"),
    ("emt", ["--train-set", "svhn"], "--train-set: unknown value(s) svhn"),
    ("emt", ["--tracker", "tensorboard", "--no-tune"], "--tracker logs through Ray Tune's callbacks"),
    ("mitigation", ["--max-concurrent", "0"], "--max-concurrent must be ≥ 1, got 0"),
]


@pytest.mark.parametrize("name,argv,message", BAD_ARGS)
def test_user_errors_are_one_line_exit_2(name, argv, message, fake_root, capsys):
    data, models, out = fake_root
    rc = load_study(name).SPEC.main(["--preset", "paper", "--data-root", str(data), "--out", str(out),
                                     "--dry-run", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"{name}: error: ") and err.count("\n") == 1 and message in err, err


def test_reproduction_values_and_user_flags(capsys):
    from mllmcl_ray.study.summary import reproduction_title

    sp = load_study("scale_pythia")
    ctx = context(sp, ["--reproduce", "fig5"])
    assert (ctx.args.methods, ctx.args.recipes, ctx.seeds) == ("naive,msgm+rehearsal", "continual", [0, 1])
    assert ctx.args.scales == "pythia-160m,pythia-410m,pythia-1b,pythia-1.4b"  # PerPreset: paper value
    g = sp.grid(ctx)
    assert [m["name"] for m in g["method"]] == ["naive", "msgm+rehearsal"] and g["recipe"] == ["continual"]
    assert g["method"][1]["params"] == {"soft_targets": {"alpha": 0.01}, "rehearsal": {"fraction": 0.01},
                                        "lora": {"rank": 0.5, "alpha": 8.0, "use_rslora": True,
                                                 "target": "all_linear"}}
    assert ctx.overrides == ()  # as published: the summary's title is the reproduction's
    assert reproduction_title(ctx).startswith("fig5 (Fig. 5:")
    ctx = context(sp, ["--methods", "naive", "--seeds", "3"])  # the user's flags win; default fig3b
    assert ctx.reproduction.name == "fig3b" and ctx.args.recipes == "llava"
    assert ctx.args.methods == "naive" and ctx.seeds == [3]
    assert ctx.overrides == ("--methods naive", "--seeds 3")  # named in the summary's title
    assert reproduction_title(ctx).startswith("custom: fig3b's settings with --methods naive, --seeds 3 "
                                              "(so not Fig. 3b")
    same = context(sp, ["--reproduce", "fig5", "--recipes", "continual", "--seeds", "0,1"])
    assert same.overrides == ()  # flags equal to the reproduction's values change nothing
    assert ctx.args.scales.split(",") == ["pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b"]
    t1 = context(sp, ["--reproduce", "table1"])
    assert t1.args.scales == "pythia-410m" and len(sp.grid(t1)["method"]) == 6
    assert len(sp.grid(context(sp, ["--reproduce", "fig2b"]))["model"]) == 9  # the paper's 9 LLMs


def test_spec_declaration_errors():
    from mllmcl_ray.config import ConfigError
    from mllmcl_ray.study import Arg, Reproduction, StudySpec

    with pytest.raises(ConfigError, match="no reproduction"):
        StudySpec("s", "doc", base=None, grid=None, reproductions=())
    with pytest.raises(ConfigError, match="unknown option"):
        StudySpec("s", "doc", base=None, grid=None, reproductions=(Reproduction("r", "d", {"scales": "x"}),),
                  args=(Arg("--methods", "m"),))


def test_method_table():
    """Every named method builds (its params validate) on both presets; α = 0.01 is written
    once; CoIN's "lora" is MoELoRA with one expert."""
    import re

    from mllmcl_ray.methods.base import build_methods
    from mllmcl_ray.presets import methods as T

    for m in T.METHODS.values():
        for preset in ("paper", "micro"):
            build_methods(m.config(preset))
    import ast

    def constants(path):
        return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                and isinstance(n.value, float) and n.value == 0.01]

    # in code, 0.01 is written twice: SOFT_TARGETS_ALPHA and REHEARSAL_FRACTION; no study repeats it
    assert len(constants(REPO / "mllmcl_ray" / "presets" / "methods.py")) == 2
    for f in (REPO / "studies").glob("*.py"):
        assert re.findall(r"\balpha\W+0\.01\b", f.read_text()) == [], f
    coin = T.method_config("coin-lora", "micro")
    assert coin == {"name": "moelora", "params": {"moelora": {
        "num_experts": 1, "rank": 32, "alpha": 64.0, "use_rslora": False, "train_projector": False}}}
    assert "ONE expert" in T.METHODS["coin-lora"].doc
    assert T.method_config("coin-ewc", "micro")["params"]["ewc"] == {"lam": 0.1, "fisher_samples": 200}
    from mllmcl_ray.config import ConfigError

    with pytest.raises(ConfigError, match="method table"):
        T.method_config("nope")


def test_paper_preset_evaluation_as_the_papers():
    """Issue 10: the full lm-eval sets (no cap), CoIN's full test sets, the kinds of docs/evaluation.md,
    generation budgets left to the kind (EvalSet's default), Pythia-1.4B-instruct."""
    from mllmcl_ray.config import EvalSet
    from mllmcl_ray.presets.paper import PAPER_MODELS, PaperPreset

    assert PAPER_MODELS["pythia-1.4b-instruct"].hub_id == "lambdalabs/pythia-1.4b-deduped-synthetic-instruct"
    assert len(PAPER_MODELS) == 9
    p = PaperPreset("/d")
    cfg = p.run_config("pythia-160m")
    assert cfg.eval.nl_max_samples is None and all(s.max_samples is None for s in cfg.nl_sets)
    # RefCOCO: vlm-evaluation's slim file holds 1024 each of RefCOCO, RefCOCO+ and RefCOCOg
    kinds = {e.name: (e.kind, e.max_samples) for t in cfg.tasks for e in t.eval}
    assert kinds == {"vqav2": ("vqa", 1024), "gqa": ("gqa", 1024), "textvqa_ocr": ("textvqa", 1024),
                     "textvqa_pure": ("textvqa", 1024), "refcoco": ("grounding", 3 * 1024)}
    default_budget = EvalSet().max_new_tokens
    assert all(e.max_new_tokens == default_budget for t in cfg.tasks for e in t.eval)
    coin = {n: p.coin_task(n).eval[0] for n in p.coin_tasks()}
    assert {n: e.kind for n, e in coin.items()} == {
        "ScienceQA": "option", "TextVQA": "textvqa", "ImageNet": "label_contain", "GQA": "gqa",
        "VizWiz": "exact_ci", "Grounding": "grounding", "VQAv2": "exact_ci", "OCR-VQA": "exact_ci"}
    assert all(e.max_samples is None and e.max_new_tokens == default_budget for e in coin.values())
    assert PaperPreset("/d", eval_samples=100).coin_task("GQA").eval[0].max_samples == 100
    assert PaperPreset("/d", eval_samples=0).run_config("pythia-160m").tasks[1].eval[0].max_samples is None


def _imports(path: Path, pkg: str) -> set[str]:
    """Absolute module names a file imports (relative imports resolved; any nesting)."""
    import ast

    mod = ".".join(path.relative_to(REPO).with_suffix("").parts)
    base = mod.split(".")[:-1] if path.name != "__init__.py" else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - node.level + 1]
                name = ".".join(parts + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {n for n in out if n.startswith(pkg)}


def test_import_arrows_point_down():
    """presets/, sweep.py and runner.py never import the study layer; data/ and methods/
    never import train/; sweep.py never imports presets/ (no sweep↔study circle)."""
    pkg = REPO / "mllmcl_ray"
    rules = [("presets", ("mllmcl_ray.study",)), ("sweep.py", ("mllmcl_ray.study", "mllmcl_ray.presets")),
             ("runner.py", ("mllmcl_ray.study", "mllmcl_ray.presets", "mllmcl_ray.sweep")),
             ("validate.py", ("mllmcl_ray.study", "mllmcl_ray.presets", "mllmcl_ray.sweep")),
             # the training forward lives in models/ (models/training.py), the micro
             # world's base-model pretraining in presets/
             ("data", ("mllmcl_ray.train",)), ("methods", ("mllmcl_ray.train",))]
    for where, banned in rules:
        files = [pkg / where] if where.endswith(".py") else sorted((pkg / where).rglob("*.py"))
        for f in files:
            bad = [n for n in _imports(f, "mllmcl_ray") if n.startswith(banned)]
            assert not bad, f"{f.relative_to(REPO)} imports {bad}"
    assert not (pkg / "study.py").exists() and not (pkg / "presets.py").exists()
    assert not (pkg / "data" / "micro" / "pretrain.py").exists()


# ---------------------------------------------------------------------------------------
# the tiny world: a throw-away study end to end, and every study's micro dry run (slow)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory):
    """An output dir whose bases/ holds the tiny world's nano models (made once here)."""
    from mllmcl_ray.presets.micro import prepare_micro

    out = tmp_path_factory.mktemp("tiny-study")
    prepare_micro(out, sizes=["nano"], world_size="tiny", progress=False, log=lambda s: None)
    return out


TINY = ["--preset", "micro", "--world-size", "tiny", "--quiet", "--eval-samples", "4"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_throwaway_study_from_a_spec(tiny_out, capsys):
    """A new study is a StudySpec of a few lines; it runs on the tiny world (no Tune)."""
    from mllmcl_ray.presets import method_configs
    from mllmcl_ray.results import ResultStore
    from mllmcl_ray.study import Reproduction, StudySpec

    spec = StudySpec(
        name="throwaway", doc="Naive vs Soft Targets on the micro world's VQA task.",
        base=lambda ctx: ctx.preset.run_config("nano", tasks=["vqa"], study="throwaway"),
        grid=lambda ctx: {"method": method_configs(["naive", "soft_targets"], ctx.preset.name),
                          "seed": ctx.seeds},
        reproductions=(Reproduction("only", "the one recipe"),))
    rc = spec.main([*TINY, "--out", str(tiny_out), "--no-tune", "--set", "stages.align.max_steps=1",
                    "--set", "stages.finetune.max_steps=1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    df = ResultStore(tiny_out / "results").read({"study": "throwaway"})
    assert sorted(df["method"].unique()) == ["naive", "soft_targets"]
    assert sorted(df["trained_task_index"].unique()) == [1, 2] and "vqa" in set(df["eval_task"])
    summary = (tiny_out / "throwaway-summary.md").read_text()
    assert summary in out and summary.count("| nano |") == 2
    assert (tiny_out / "throwaway-report.html").stat().st_size > 100_000


MICRO_MODEL = {"scale_pythia": ["--scales", "nano"], "mitigation": ["--model", "nano"],
               "coin": ["--model", "nano"], "emt": ["--model", "nano"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_every_reproduction_validates_on_micro(name, tiny_out, capsys):
    mod = load_study(name)
    for r in mod.SPEC.reproductions:
        rc = mod.SPEC.main([*TINY, "--out", str(tiny_out), "--dry-run", "--reproduce", r.name,
                            *MICRO_MODEL[name]])
        text = capsys.readouterr().out
        assert rc == 0, (r.name, text)
        assert "run configs valid" in text and "MISSING" not in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tracker_logs_per_task_results(tiny_out, ray_local, capsys):
    """--tracker tensorboard: the one run goes through Ray Tune (even alone); its trial
    reports one result per trained task (base model, then the task) into TensorBoard files."""
    from mllmcl_ray.study import Reproduction, StudySpec

    spec = StudySpec(
        name="tracked", doc="One naive run, tracked.",
        base=lambda ctx: ctx.preset.run_config("nano", tasks=["vqa"], study="tracked"),
        grid=lambda ctx: {"seed": ctx.seeds}, reproductions=(Reproduction("only", "the one recipe"),))
    rc = spec.main([*TINY, "--out", str(tiny_out), "--tracker", "tensorboard",
                    "--set", "stages.align.max_steps=1", "--set", "stages.finetune.max_steps=1"])
    assert rc == 0, capsys.readouterr().out
    trial = next((tiny_out / "tune").glob("tracked-*/*/result.json")).parent
    results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert [r["trained_task_index"] for r in results] == [1, 2]
    assert results[0]["delta_nl"] == 0.0 and "final_delta_nl" in results[1]
    assert list(trial.glob("events.out.tfevents.*"))
