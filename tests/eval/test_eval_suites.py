"""Suites, judge and evaluator: NL scorers on hand-made items with a controlled engine
(hand-worked accuracies, lm-eval request shapes), VL scoring per kind and the OCR prompt
option, EMT decisions, judge parsing and its reply cache (a rerun makes no engine
call), the Evaluator's Parquet rows (all columns; a rerun writes none), and the Ray
actor path (1 actor on CPU)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mllmcl_ray.config import EvalConfig, EvalSet, ModelSpec
from mllmcl_ray.eval.engine.base import Engine, GenRequest, engine_factory
from mllmcl_ray.eval.evaluator import EvalJob, Evaluator
from mllmcl_ray.eval.judge import JUDGE_PROMPT_VERSION, Judge, coin_judge_prompt, parse_yes_no
from mllmcl_ray.eval.suites import nl
from mllmcl_ray.eval.suites.emt import emt_prompt, run_emt_set
from mllmcl_ray.eval.suites.vl import add_ocr_tokens, run_vl_set
from mllmcl_ray.models.build import build_mllm, save_mllm
from mllmcl_ray.models.templates import get_template
from mllmcl_ray.models.tokenizers import train_bpe_tokenizer
from mllmcl_ray.results import RESULT_SCHEMA, PredictionStore, ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


TEMPLATE = get_template("micro")


class ScriptedEngine(Engine):
    """An engine whose answers the test controls."""

    name = "scripted"

    def __init__(self, ll=None, answers=None, default_answer="", default_ll=(-10.0, False)):
        self.ll = ll or {}
        self.answers = answers or {}
        self.default_answer = default_answer
        self.default_ll = default_ll
        self.ll_calls: list[tuple[str, str]] = []
        self.gen_calls: list[GenRequest] = []
        self.template = TEMPLATE

    def loglikelihood(self, pairs):
        self.ll_calls.extend(pairs)
        return [self.ll.get(p, self.default_ll) for p in pairs]

    def generate(self, requests):
        self.gen_calls.extend(requests)
        out = []
        for r in requests:
            a = self.default_answer
            for key, val in self.answers.items():
                if key in r.prompt:
                    a = val
            out.append(a)
        return out

    def embed(self, texts):  # bag of letters: enough for nearest-label tests
        return np.array([[t.lower().count(c) for c in "abcdefghijklmnopqrstuvwxyz"]
                         for t in texts], dtype=float)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------------------------------
# NL
# ---------------------------------------------------------------------------------------
LAMBADA = [{"id": "l1", "context": "Anna gave the ball to Tom. Then Tom held the", "target": "ball"},
           {"id": "l2", "context": "The cat sat on the", "target": "mat"},
           {"id": "l3", "context": "Red is a", "target": "colour"}]
ARC = [{"id": "a1", "question": "Who has the ball?", "choices": ["Anna", "Tom", "Ben"], "label": 1},
       {"id": "a2", "question": "What colour is the sky?", "choices": ["blue", "red"], "label": 0},
       {"id": "a3", "question": "Where is the cup?", "choices": ["box", "shelf", "bag", "car"], "label": 3}]
WINO = [{"id": "w1", "sentence": "Anna ran faster than Tom, so _ won the race.", "option1": "Anna",
         "option2": "Tom", "answer": "1"},
        {"id": "w2", "sentence": "The ball did not fit in the box because the _ was too big.",
         "option1": "ball", "option2": "box", "answer": "1"},
        {"id": "w3", "sentence": "Ben waited for Sam because _ was late.", "option1": "Ben",
         "option2": "Sam", "answer": "2"}]


def test_lambada_is_greedy_accuracy(tmp_path):
    # correct: l1 (greedy), l3 (greedy); l2 not greedy → 2/3
    eng = ScriptedEngine(ll={("Anna gave the ball to Tom. Then Tom held the", " ball"): (-1.0, True),
                             ("The cat sat on the", " mat"): (-2.0, False),
                             ("Red is a", " colour"): (-3.0, True)})
    es = EvalSet(name="lambada", path=write_jsonl(tmp_path / "l.jsonl", LAMBADA), kind="lambada")
    res = nl.run_nl_set(eng, es)
    assert res.split == "nlg" and res.n == 3
    assert res.metrics["accuracy"] == pytest.approx(2 / 3)
    assert res.metrics["perplexity"] == pytest.approx(math.exp(2.0))
    assert eng.ll_calls == [(d["context"], " " + d["target"]) for d in LAMBADA]
    # the informal generate mode: first generated word vs target
    gen = ScriptedEngine(answers={"Tom held the": "ball.", "sat on the": "mat and", "Red is a": "color"})
    res = nl.run_nl_set(gen, es, lambada_mode="generate")
    assert res.metrics["accuracy"] == pytest.approx(2 / 3)
    assert all("<image>" not in r.prompt and r.image is None for r in gen.gen_calls)


def test_arc_argmax_loglikelihood(tmp_path):
    q = "Question: {}\nAnswer:"
    ll = {(q.format("Who has the ball?"), " Tom"): (-1.0, False),  # a1 right
          (q.format("What colour is the sky?"), " red"): (-0.5, False),  # a2 wrong
          (q.format("Where is the cup?"), " car"): (-0.1, False)}  # a3 right
    eng = ScriptedEngine(ll=ll, default_ll=(-5.0, False))
    es = EvalSet(name="arc_easy", path=write_jsonl(tmp_path / "a.jsonl", ARC), kind="nl")
    res = nl.run_nl_set(eng, es)
    assert res.split == "nlu" and res.metrics["accuracy"] == pytest.approx(2 / 3)
    assert eng.ll_calls[:3] == [(q.format("Who has the ball?"), " Anna"),
                                (q.format("Who has the ball?"), " Tom"),
                                (q.format("Who has the ball?"), " Ben")]
    assert [p["pred"] for p in res.predictions] == [1, 1, 3]


def test_winogrande_partial_evaluation(tmp_path):
    ll = {("Anna ran faster than Tom, so Anna", " won the race."): (-1.0, False),
          ("Anna ran faster than Tom, so Tom", " won the race."): (-2.0, False),  # w1 right
          ("The ball did not fit in the box because the ball", " was too big."): (-3.0, False),
          ("The ball did not fit in the box because the box", " was too big."): (-1.0, False),  # w2 wrong
          ("Ben waited for Sam because Ben", " was late."): (-4.0, False),
          ("Ben waited for Sam because Sam", " was late."): (-1.5, False)}  # w3 right
    eng = ScriptedEngine(ll=ll)
    es = EvalSet(name="winogrande", path=write_jsonl(tmp_path / "w.jsonl", WINO))
    res = nl.run_nl_set(eng, es)
    assert set(eng.ll_calls) == set(ll)
    assert res.metrics["accuracy"] == pytest.approx(2 / 3)


def test_wsc273_form():
    # the micro world's form: text, pronoun, pronoun_loc, options, answer (+ SuperGLUE span fields)
    text = "Anna thanked Mia because she had helped a lot."
    doc = {"text": text, "pronoun": "she", "pronoun_loc": text.index("she"),
           "options": ["Anna", "Mia"], "answer": 1, "label": 1}
    pairs, gold = nl.wsc_requests(doc)
    # lm-eval's wsc273 request: target delimiter " " + the text after the pronoun as is
    assert pairs == [("Anna thanked Mia because Anna", "  had helped a lot."),
                     ("Anna thanked Mia because Mia", "  had helped a lot.")]
    assert gold == 1
    text = "The ball fell off the table because it was round."
    pairs, _ = nl.wsc_requests({"text": text, "pronoun": "it", "pronoun_loc": text.index("it "),
                                "options": ["The ball", "the table"], "label": 0})
    assert pairs[0][0] == "The ball fell off the table because the ball"  # lm-eval lower-cases


def test_subset_is_seeded_and_stable(tmp_path):
    docs = [{"id": str(i), "context": f"w{i} is", "target": "x"} for i in range(50)]
    es = EvalSet(name="lambada", path=write_jsonl(tmp_path / "l.jsonl", docs), max_samples=10)
    a = nl.run_nl_set(ScriptedEngine(), es, seed=3)
    b = nl.run_nl_set(ScriptedEngine(), es, seed=3)
    c = nl.run_nl_set(ScriptedEngine(), es, seed=4)
    assert a.n == 10 and a.eval_set_hash == b.eval_set_hash != c.eval_set_hash
    assert [p["id"] for p in a.predictions] == sorted((p["id"] for p in a.predictions), key=int)


# ---------------------------------------------------------------------------------------
# VL / EMT data
# ---------------------------------------------------------------------------------------
def make_vl_data(root, n_images=4):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    ask = "\nAnswer the question using a single word or phrase."
    vqa = [{"id": f"v{i}", "image": f"{i}.png", "ocr_tokens": ["stop", "sign"],
            "conversations": [{"from": "human", "value": f"<image>\nwhat colour is shape {i}?{ask}"},
                              {"from": "gpt", "value": "red"}],
            "answers": ["red"] * 7 + ["blue"] * 3} for i in range(3)]
    grd = [{"id": f"g{i}", "image": f"{i}.png",
            "conversations": [{"from": "human", "value": "<image>\nPlease provide the bounding box "
                               f"coordinate of the region this sentence describes: ball {i}"},
                              {"from": "gpt", "value": "[0.1, 0.1, 0.5, 0.5]"}],
            "bbox": [0.1, 0.1, 0.5, 0.5]} for i in range(2)]
    labels = ["circle", "square", "triangle"]
    cls = [{"id": f"c{i}", "image": f"{i}.png", "label": labels[i], "labels": labels,
            "conversations": [{"from": "human", "value": "<image>\nWhat is the object in the image?" + ask},
                              {"from": "gpt", "value": labels[i]}]} for i in range(3)]
    out = {}
    for name, recs in (("vqa", vqa), ("grounding", grd), ("cls", cls)):
        (root / f"{name}.json").write_text(json.dumps(recs))
        out[name] = str(root / f"{name}.json")
    return out


def test_vl_kinds_and_ocr_option(tmp_path):
    files = make_vl_data(tmp_path / "vl")
    eng = ScriptedEngine(answers={"shape 0": "Red", "shape 1": "blue", "shape 2": "green",
                                  "ball 0": "[0.1, 0.1, 0.5, 0.55]", "ball 1": "[0.6, 0.6, 0.9, 0.9]"})
    res = run_vl_set(eng, EvalSet(name="vqa", path=files["vqa"], kind="vqa"))
    # official VQA accuracy with 7×red, 3×blue: red → 1.0, blue → mean over 10 subsets = 0.9
    assert res.metrics["accuracy"] == pytest.approx((1.0 + 0.9 + 0.0) / 3)
    assert all(r.image and r.prompt.count("<image>") == 1 for r in eng.gen_calls)
    assert all("Reference OCR token" not in r.prompt for r in eng.gen_calls)
    eng.gen_calls.clear()
    ocr = run_vl_set(eng, EvalSet(name="textvqa_ocr", path=files["vqa"], kind="vqa"))
    assert all("Reference OCR token: stop, sign\nAnswer the question" in r.prompt for r in eng.gen_calls)
    assert ocr.prompt_version == TEMPLATE.version + "+ocr" and ocr.eval_set_hash != res.eval_set_hash
    g = run_vl_set(eng, EvalSet(name="refcoco", path=files["grounding"], kind="grounding"))
    assert g.metrics["accuracy"] == pytest.approx(0.5)
    c = run_vl_set(ScriptedEngine(default_answer="circle"),
                   EvalSet(name="imagenet", path=files["cls"], kind="classification", max_samples=2),
                   seed=0)
    assert c.n == 2 and c.metrics["accuracy"] == pytest.approx(
        np.mean([p["reference"] == "circle" for p in c.predictions]))
    assert add_ocr_tokens("what is it?", ["a"]) == "what is it?\nReference OCR token: a"


# ---------------------------------------------------------------------------------------
# eval-kind registry
# ---------------------------------------------------------------------------------------
def test_unknown_kind_is_a_config_error_listing_the_known_kinds():
    from mllmcl_ray.config import ConfigError, RunConfig, from_dict

    with pytest.raises(ConfigError, match=r"EvalSet 'x': unknown eval kind 'vqa2'.*vqa_2021.*"
                       r"textvqa.*exact_ci.*label_contain.*gqa.*grounding"):
        EvalSet(name="x", kind="vqa2")
    with pytest.raises(ConfigError, match="unknown eval kind 'bogus'"):
        from_dict(RunConfig, {"tasks": [{"name": "t", "eval": [{"name": "e", "kind": "bogus"}]}]})
    # NL kinds match by prefix, as the NL suite names its datasets
    assert EvalSet(name="arc_easy", kind="arc_easy").kind == "arc_easy"


def test_every_kind_fixed_in_kinds_md_is_registered():
    from mllmcl_ray.eval import kinds

    for name in ("vqa", "vqa_2021", "textvqa", "exact_ci", "label_contain", "option", "gqa",
                 "grounding", "exact", "classification"):
        k = kinds.get_kind(name)
        assert k.scorer is not None and k.reference is not None and k.max_new_tokens > 0
        assert k.source and k.doc


def test_grounding_budget_fits_a_box_for_every_paper_tokenizer():
    """A two-decimal box is 24 Llama-2 tokens (sentencepiece splits digits; measured), 17
    GPT-2/Phi-2 tokens (measured) and at most its 24 bytes with GPT-NeoX's byte-level BPE.
    Bound used here: byte-level BPE ≤ bytes; sentencepiece ≤ characters + 1 (the leading
    "▁"); + 1 end-of-text token. Three-decimal boxes must fit too."""
    from mllmcl_ray.eval import kinds

    budget = kinds.default_max_new_tokens("grounding")
    for box in ("[0.12, 0.34, 0.56, 0.78]", "[0.123, 0.345, 0.567, 0.789]"):
        assert budget >= len(box.encode()) + 1 + 1
    assert budget > 16  # the old default cut a Llama-2 box at "[0.12, 0.34, 0.5"


def test_budget_none_uses_the_kind_default_and_truncated_boxes_are_counted(tmp_path):
    files = make_vl_data(tmp_path / "vl")
    eng = ScriptedEngine(answers={"ball 0": "[0.1, 0.1, 0.5, 0.5]", "ball 1": "[0.12, 0.34, 0.5"})
    g = run_vl_set(eng, EvalSet(name="refcoco", path=files["grounding"], kind="grounding"))
    assert [r.max_new_tokens for r in eng.gen_calls] == [40, 40]
    assert g.decoding["max_new_tokens"] == 40
    assert g.metrics == {"accuracy": 0.5, "grounding_truncated": 0.5, "grounding_unparseable": 0.0}
    assert sorted(p["outcome"] for p in g.predictions) == ["hit", "truncated"]
    eng.gen_calls.clear()
    run_vl_set(eng, EvalSet(name="refcoco", path=files["grounding"], kind="grounding",
                            max_new_tokens=64))
    assert {r.max_new_tokens for r in eng.gen_calls} == {64}


def test_judge_samples_as_coin_and_uses_the_grounding_rule():
    from mllmcl_ray.eval.judge import COIN_GROUNDING_RULE, COIN_RULE

    class Recording(ScriptedEngine):
        def generate(self, requests):
            self.gen_calls.extend(requests)
            return ["8"] * len(requests)

    eng = Recording()
    eng.template = None  # a judge is a plain LM: its prompt carries CoIN's system message
    j = Judge(eng, judge_id="qwen")
    r = j.judge_answers([("ball 0", "[0.1, 0.1, 0.5, 0.5]", "[0.1, 0.1, 0.5, 0.5]")],
                        rule="CoIN_Grounding")
    req = eng.gen_calls[0]
    assert (req.temperature, req.top_p, req.repetition_penalty, req.max_new_tokens) == (
        0.7, 0.8, 1.05, 20)
    assert COIN_GROUNDING_RULE in req.prompt and "You are a helpful assistant." in req.prompt
    assert r.score == 80.0
    info = j.info()
    assert info["judge_sampling"]["temperature"] == 0.7 and info["judge"] == "qwen"
    eng.gen_calls.clear()
    j.judge_answers([("q", "a", "a")])
    assert COIN_RULE in eng.gen_calls[0].prompt and COIN_GROUNDING_RULE not in eng.gen_calls[0].prompt
    # EMT's yes/no decision stays greedy, and its rows say so
    eng.gen_calls.clear()
    j.judge_emt([("cat", "a cat")])
    assert eng.gen_calls[0].temperature == 0.0
    assert j.info("emt-judge-v1")["judge_sampling"]["greedy"] is True


def test_emt_decisions(tmp_path):
    files = make_vl_data(tmp_path / "vl")
    # c0 (circle): correct; c1 (square): names two labels (intrinsic); c2 (triangle): none (extrinsic)
    eng = ScriptedEngine(answers={"object in [circle": "circle"})
    eng.answers = {}
    answers = iter(["a circle", "a square or a triangle", "a trianglee shape"])
    eng.generate = lambda reqs: [next(answers) for _ in reqs]

    class YesJudgeEngine(ScriptedEngine):
        def generate(self, requests):
            return ["Yes" if "[Label]\ncircle" in r.prompt or "[Label]\ntriangle" in r.prompt
                    else "No" for r in requests]

    judge = Judge(YesJudgeEngine(), judge_id="scripted-judge")
    res = run_emt_set(eng, EvalSet(name="emt_shapes", path=files["cls"], kind="classification"),
                      embedder=ScriptedEngine().embed, judge=judge)
    m = res.metrics
    assert m["emt_exact"] == pytest.approx(1 / 3)
    assert m["emt_exact_intrinsic"] == pytest.approx(1 / 3)
    assert m["emt_exact_extrinsic"] == pytest.approx(1 / 3)
    assert m["emt_exact_wrong"] == 0
    assert m["emt_judge"] == pytest.approx(2 / 3)
    # bag-of-letters nearest: "a trianglee shape" is nearest "triangle"
    assert res.predictions[2]["emt_nearest"] == "correct"
    assert res.decoding["judge"] == "scripted-judge"
    # EMT's prompt: labels without brackets (the paper's example), noun per dataset
    assert emt_prompt(["a", "b"]) == ("What is the object in the image? Please only answer a "
                                      "single object in a, b.")
    assert "single object in circle, square, triangle." in res.predictions[0]["prompt"]


# ---------------------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------------------
class CountingJudgeEngine(ScriptedEngine):
    def __init__(self, replies):
        super().__init__()
        self.replies = replies
        self.calls = 0

    def generate(self, requests):
        self.calls += 1
        return [next(r for k, r in self.replies.items() if k in q.prompt) for q in requests]


def test_judge_parsing_and_cache(tmp_path):
    replies = {"answer one": "8", "answer two": "7/10", "answer three": "I cannot tell"}
    items = [("what is it?", "red", "answer one"), ("how many?", "2", "answer two"),
             ("where?", "box", "answer three")]
    built = []

    def factory():
        built.append(CountingJudgeEngine(replies))
        return built[-1]

    j1 = Judge(factory, judge_id="judge-a", cache_path=tmp_path / "cache.sqlite")
    r = j1.judge_answers(items)
    assert r.scores == [8.0, 7.0, None]
    # CoIN evaluate_score.py: "8" -> 8, "7/10" -> 7, no digit -> 0 in N: 100*15/(10*3)
    assert r.score == pytest.approx(100 * 15 / 30) and r.n_unparseable == 1 and r.n_scored == 2
    assert built[0].calls == 1 and j1.generated == 3
    assert "[Ground truth answer]\nred" in coin_judge_prompt("what is it?", "red", "answer one")
    # a rerun (new process, same cache): no engine is built, no call made, same scores
    j2 = Judge(factory, judge_id="judge-a", cache_path=tmp_path / "cache.sqlite")
    assert j2.judge_answers(items).scores == r.scores
    assert len(built) == 1 and j2.engine_calls == 0
    # another judge model does not reuse judge-a's replies
    j3 = Judge(factory, judge_id="judge-b", cache_path=tmp_path / "cache.sqlite")
    j3.judge_answers(items[:1])
    assert len(built) == 2
    assert j1.info()["judge_prompt_version"] == JUDGE_PROMPT_VERSION
    assert parse_yes_no("Yes.") is True and parse_yes_no("no, it is not") is False
    assert parse_yes_no("maybe") is None


# ---------------------------------------------------------------------------------------
# evaluator (real tiny model) and Ray actors
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    files = make_vl_data(root / "vl")
    nl_sets = [EvalSet(name="lambada", path=write_jsonl(root / "lambada.jsonl", LAMBADA)),
               EvalSet(name="arc_easy", path=write_jsonl(root / "arc_easy.jsonl", ARC)),
               EvalSet(name="winogrande", path=write_jsonl(root / "winogrande.jsonl", WINO))]
    tok = train_bpe_tokenizer([d["context"] for d in LAMBADA] + [w["sentence"] for w in WINO]
                              + ["what colour is the circle? red"] * 20, vocab_size=300)
    torch.manual_seed(0)
    spec = ModelSpec(name="tiny", family="gpt_neox", template="micro",
                     llm_config=dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=1, vocab_size=len(tok),
                                     max_position_embeddings=512),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16))
    ckpt = save_mllm(build_mllm(spec, tokenizer=tok), root / "ckpt")
    vl_tasks = [(2, "vqa", [EvalSet(name="vqa", path=files["vqa"], kind="vqa", max_new_tokens=4),
                            EvalSet(name="refcoco", path=files["grounding"], kind="grounding",
                                    max_new_tokens=4)])]
    emt_tasks = [(3, "cls", [EvalSet(name="emt_shapes", path=files["cls"], kind="classification",
                                     max_new_tokens=4)])]
    return dict(root=root, ckpt=str(ckpt), nl_sets=nl_sets, vl_tasks=vl_tasks, emt_tasks=emt_tasks)


META = {"run_id": "r1", "study": "s", "model": "tiny", "scale": 1e5, "method": "naive",
        "method_params": {"lr": 1e-4}, "seed": 0}


def test_evaluator_writes_all_columns_and_rerun_writes_none(world, tmp_path):
    store, preds = ResultStore(tmp_path / "res"), PredictionStore(tmp_path / "res")
    cfg = EvalConfig(batch_size=4, judge=world["ckpt"], nl_max_samples=2)
    ev = Evaluator(engine_factory("transformers", batch_size=4), store, preds, cfg)
    kw = dict(run_meta=META, trained_task_index=2, trained_task="vqa", nl_sets=world["nl_sets"],
              vl_tasks=world["vl_tasks"], emt_tasks=world["emt_tasks"])
    rows = ev.evaluate(world["ckpt"], **kw)
    df = store.read()
    assert list(df.columns) == RESULT_SCHEMA.names and len(df) == len(rows) > 0
    assert not df.isna().any().drop("value").any()
    got = set(zip(df.eval_task, df.dataset, df.metric))
    assert {("nl", "lambada", "accuracy"), ("nl", "arc_easy", "accuracy"),
            ("nl", "winogrande", "accuracy"), ("vqa", "vqa", "accuracy"),
            ("vqa", "vqa", "judge_score"), ("vqa", "refcoco", "accuracy"),
            ("cls", "emt_shapes", "emt_exact"), ("cls", "emt_shapes", "emt_judge")} <= got
    # the random vision tower has no CLIP text tower: no nearest-label decision
    assert ("cls", "emt_shapes", "emt_nearest") not in got
    nl_rows = df[df.eval_task == "nl"]
    assert set(nl_rows.eval_task_index) == {1} and set(nl_rows.split) == {"nlg", "nlu"}
    assert (nl_rows.n == 2).all()
    vqa = df[(df.dataset == "vqa") & (df.metric == "accuracy")].iloc[0]
    assert vqa.prompt_version == "micro-v1" and vqa.split == "vl" and vqa.eval_task_index == 2
    assert json.loads(vqa.decoding)["greedy"] is True
    judge_row = df[df.metric == "judge_score"].iloc[0]
    assert judge_row.split == "judge" and json.loads(judge_row.decoding)["judge"] == world["ckpt"]
    assert judge_row.eval_set_hash == vqa.eval_set_hash
    # judge rows: CoIN's sampling and rule recorded; Grounding judged by CoIN_Grounding
    dec = json.loads(judge_row.decoding)
    assert dec["judge_sampling"]["temperature"] == 0.7 and dec["judge_rule"] == "CoIN"
    ref_judge = df[(df.dataset == "refcoco") & (df.metric == "judge_score")].iloc[0]
    assert ref_judge.prompt_version.endswith("/CoIN_Grounding")
    assert {("vqa", "refcoco", "grounding_truncated"), ("vqa", "vqa", "judge_unparseable_count")} <= got
    assert df.checkpoint_id.eq(world["ckpt"]).all() and df.method_params.eq('{"lr": 0.0001}').all()
    assert len(preds.read()) == 2 + 2 + 2 + 3 + 2 + 3
    # rerun: nothing is computed (no engine built), nothing written
    ev2 = Evaluator(engine_factory("transformers", batch_size=4), store, preds, cfg)
    assert len(ev2.evaluate(world["ckpt"], **kw)) == 0
    assert ev2.engines_built == 0 and len(store.read()) == len(df)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # another module's cluster: use it, leave it running
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_actor_pool_streams_rows(world, tmp_path, ray_cluster):
    from mllmcl_ray.eval.engine.actors import evaluate_many

    store, preds = ResultStore(tmp_path / "res"), PredictionStore(tmp_path / "res")
    cfg = EvalConfig(batch_size=4, nl_max_samples=2)
    vl_tasks = [(2, "vqa", world["vl_tasks"][0][2][:1])]
    jobs = [EvalJob(world["ckpt"], dict(META, run_id=rid), 2, "vqa", nl_sets=world["nl_sets"][1:2],
                    vl_tasks=vl_tasks) for rid in ("r1", "r2")]
    seen = []
    rows = evaluate_many(jobs, store=store, predictions=preds, cfg=cfg, num_actors=1,
                         cpus_per_actor=1, on_result=lambda job, r: seen.append(len(r)))
    df = store.read()
    assert len(df) == len(rows) and len(seen) == 2 * 2  # (1 NL + 1 VL set) × 2 runs
    assert set(df.run_id) == {"r1", "r2"} and set(df.dataset) == {"arc_easy", "vqa"}
    assert len(preds.read()) == 2 * (2 + 3)
    assert len(evaluate_many(jobs, store=store, predictions=preds, cfg=cfg, num_actors=1)) == 0


def test_docs_list_every_eval_kind_with_its_source():
    from pathlib import Path

    from mllmcl_ray.eval import kinds

    text = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    table = text.split("## Eval kinds")[1].split("###")[0]
    for name, k in kinds.KINDS.items():
        assert f"`{name}`" in table, name
    for task in ("ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCR-VQA"):
        assert f"| {task} |" in text.split("### CoIN task → scorer")[1]
