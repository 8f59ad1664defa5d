"""The project's NL scorer (suites/nl.py) against lm-evaluation-harness itself.

A tiny GPT-NeoX base model (random weights: its log-likelihoods are arbitrary, so any
difference in how a request is built or tokenised flips argmax decisions) is scored on
the five NL sets of a generated micro world (tiny size, 50 records each) twice: by the
project's scorer and by lm-eval 0.4.13's HFLM on lm-eval's own task definitions
(lambada_standard, arc_easy, arc_challenge, winogrande, wsc273) pointed at the same
records (`suites.nl_lmeval`). Accuracies must be equal on every set, and every
per-sample log-likelihood equal to float precision.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """lm-eval reads the local JSONL tasks only (set per test: nothing leaks into others)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def micro_nl(tmp_path_factory):
    import torch

    from mllmcl_ray.config import ModelSpec
    from mllmcl_ray.data.micro.world import generate_world
    from mllmcl_ray.eval.engine.hf import HFEngine
    from mllmcl_ray.models.build import build_mllm
    from mllmcl_ray.models.tokenizers import train_bpe_tokenizer
    from mllmcl_ray.presets.micro import nl_sets_from_manifest

    root = tmp_path_factory.mktemp("parity")
    os.environ.setdefault("HF_HOME", str(root / "hf"))
    generate_world(root / "world", seed=0, size="tiny")
    manifest = json.loads((root / "world" / "manifest.json").read_text())
    sets = nl_sets_from_manifest(root / "world", manifest)
    texts = [line for s in sets for line in Path(s.path).read_text().splitlines()]
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    spec = ModelSpec(name="parity", family="gpt_neox", template="micro",
                     llm_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, vocab_size=len(tok),
                                     max_position_embeddings=256),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16))
    engine = HFEngine(build_mllm(spec, tokenizer=tok), batch_size=16, device="cpu")
    return engine, sets


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_project_scorer_equals_lm_eval_on_every_micro_nl_set(micro_nl):
    from mllmcl_ray.eval.suites.nl import run_nl_set
    from mllmcl_ray.eval.suites.nl_lmeval import run_lm_eval_set

    engine, sets = micro_nl
    assert sorted(s.name for s in sets) == ["arc_challenge", "arc_easy", "lambada", "winogrande",
                                            "wsc"]
    for s in sets:
        ours = run_nl_set(engine, s, seed=0)
        ref = run_lm_eval_set(engine, s, seed=0, batch_size=16)
        assert ref.n == ours.n == 50, s.name
        assert ref.eval_set_hash == ours.eval_set_hash  # the same records
        assert ref.decoding["lm_eval_version"] == "0.4.13" and ref.decoding["lm_eval_task"] == {
            "lambada": "lambada_standard", "wsc": "wsc273"}.get(s.name, s.name)
        assert ours.metrics["accuracy"] == ref.metrics["accuracy"], s.name
        by_id = {p["id"]: p for p in ours.predictions}
        for p in ref.predictions:
            mine = by_id[p["id"]]
            lls = [mine["loglikelihood"]] if "loglikelihood" in mine else mine["loglikelihoods"]
            assert lls == pytest.approx(p["loglikelihoods"], rel=1e-5, abs=1e-4), (s.name, p["id"])
            assert mine["correct"] == p["correct"], (s.name, p["id"])
        if s.name == "lambada":
            assert ours.metrics["perplexity"] == pytest.approx(ref.metrics["perplexity"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_nl_backend_lm_eval_rows_record_the_version(micro_nl, tmp_path):
    """`eval.nl_backend: lm_eval` through the Evaluator: rows say lm-eval ran, which version
    and task; an unknown backend is a ConfigError naming the field."""
    import lm_eval

    from mllmcl_ray.config import ConfigError, EvalConfig
    from mllmcl_ray.eval.evaluator import Evaluator
    from mllmcl_ray.results import ResultStore

    engine, sets = micro_nl
    wsc = next(s for s in sets if s.name == "wsc")
    meta = {"run_id": "r", "study": "s", "model": "m", "scale": 1.0, "method": "naive",
            "method_params": "{}", "seed": 0}
    ev = Evaluator(lambda m: engine, ResultStore(tmp_path / "res"), None,
                   EvalConfig(nl_backend="lm_eval", nl_max_samples=10))
    rows = ev.evaluate("ckpt", run_meta=meta, trained_task_index=1, trained_task="base",
                       nl_sets=[wsc])
    row = rows.iloc[0]
    dec = json.loads(row.decoding)
    assert (row.metric, row.n, row.split) == ("accuracy", 10, "nlu")
    assert dec["backend"] == "lm_eval" and dec["lm_eval_version"] == lm_eval.__version__
    assert dec["lm_eval_task"] == "wsc273" and row.prompt_version == f"lm-eval-{lm_eval.__version__}:wsc273"
    bad = Evaluator(lambda m: engine, None, None, EvalConfig(nl_backend="harness"))
    with pytest.raises(ConfigError, match="eval.nl_backend"):
        bad.evaluate("ckpt", run_meta=meta, trained_task_index=1, trained_task="base",
                     nl_sets=[wsc])
