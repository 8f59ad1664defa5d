"""Tests for mllmcl_ray.results: round trip, keyed dedup, schema errors, atomic parts."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pandas as pd
import pytest

from mllmcl_ray import results as R


def row(run="r1", k=1, eval_task="nl", dataset="lambada", metric="accuracy", value=0.5, **kw):
    base = {
        "run_id": run,
        "study": "scaling",
        "model": "micro-s",
        "scale": 1.5e7,
        "method": "naive",
        "method_params": "{}",
        "seed": 0,
        "trained_task_index": k,
        "trained_task": "pretrain" if k == 1 else f"task{k}",
        "eval_task": eval_task,
        "eval_task_index": 1 if eval_task == "nl" else 2,
        "dataset": dataset,
        "split": "nlg" if eval_task == "nl" else "vl",
        "metric": metric,
        "value": value,
        "n": 100,
        "time": 1700000000.0,
        "checkpoint_id": f"ck{k}",
        "eval_set_hash": "abc",
        "prompt_version": "v1",
        "decoding": '{"max_new_tokens": 16}',
    }
    base.update(kw)
    return base


def pred(sample="s0", correct=1.0, **kw):
    base = {
        "run_id": "r1",
        "trained_task_index": 2,
        "eval_task": "vqa",
        "dataset": "vqav2",
        "sample_id": sample,
        "prompt": "What colour?",
        "output": "red",
        "reference": "red",
        "correct": correct,
        "extra": '{"answers": ["red"]}',
    }
    base.update(kw)
    return base


def _visible_parts(path):
    return sorted(p for p in os.listdir(path) if p.startswith("part-") and p.endswith(".parquet"))


# --------------------------------------------------------------------------------------


def test_empty_store_reads_empty_frame_with_columns(tmp_path):
    store = R.ResultStore(tmp_path / "res")
    df = store.read()
    assert df.empty
    assert list(df.columns) == R.RESULT_SCHEMA.names
    assert df["value"].dtype == np.float64 and df["seed"].dtype == np.int64
    assert store.keys() == set() and len(store) == 0
    assert store.has(("r1", 1, "nl", "lambada", "accuracy")) is False


def test_round_trip(tmp_path):
    store = R.ResultStore(tmp_path)
    rows = [row(), row(dataset="arc_easy", value=0.25), row(k=2, eval_task="vqa", dataset="vqav2", value=0.75)]
    assert store.append(rows) == 3
    df = store.read().sort_values(["trained_task_index", "dataset"]).reset_index(drop=True)
    assert len(df) == 3
    assert list(df["dataset"]) == ["arc_easy", "lambada", "vqav2"]
    assert list(df["value"]) == [0.25, 0.5, 0.75]
    assert df.loc[2, "eval_task_index"] == 2 and df.loc[2, "decoding"] == '{"max_new_tokens": 16}'
    assert df["seed"].dtype == np.int64 and df["scale"].dtype == np.float64
    assert store.has(("r1", 2, "vqa", "vqav2", "accuracy"))
    assert not store.has(("r1", 2, "vqa", "gqa", "accuracy"))
    assert ("r1", 1, "nl", "lambada", "accuracy") in store.keys()
    with pytest.raises(ValueError):
        store.has(("r1", 1))
    # a new instance sees the same data (nothing held in memory only)
    assert len(R.ResultStore(tmp_path).read()) == 3


def test_read_filters_and_columns(tmp_path):
    store = R.ResultStore(tmp_path)
    store.append([row(), row(run="r2"), row(run="r3", metric="judge_score", value=7.0)])
    assert sorted(store.read({"run_id": "r2"})["run_id"]) == ["r2"]
    got = store.read({"run_id": ["r1", "r3"], "metric": "accuracy"})
    assert list(got["run_id"]) == ["r1"]
    assert list(store.read(columns=["run_id", "value"]).columns) == ["run_id", "value"]
    assert store.read({"run_id": "nope"}).empty
    with pytest.raises(ValueError, match="bogus"):
        store.read({"bogus": 1})


def test_duplicate_keys_skipped_on_reappend(tmp_path):
    store = R.ResultStore(tmp_path)
    assert store.append([row(), row(dataset="arc_easy")]) == 2
    # same keys again (different value): skipped; one new key written
    assert store.append([row(value=0.99), row(dataset="arc_easy"), row(dataset="wsc")]) == 1
    assert store.append([row()]) == 0
    # duplicates inside one batch: first kept
    assert store.append([row(k=2, value=0.1), row(k=2, value=0.2)]) == 1
    df = store.read()
    assert len(df) == 4
    assert df[(df["dataset"] == "lambada") & (df["trained_task_index"] == 1)]["value"].tolist() == [0.5]
    assert df[df["trained_task_index"] == 2]["value"].tolist() == [0.1]
    # a skipped-only append writes no part file
    assert len(_visible_parts(tmp_path)) == 3
    # the key ignores non-key columns but not the metric
    assert store.append([row(metric="judge_score")]) == 1


def test_schema_errors_name_column_and_row(tmp_path):
    store = R.ResultStore(tmp_path)
    bad = row()
    del bad["value"]
    with pytest.raises(ValueError, match=r"result row 1 .*missing column 'value'"):
        store.append([row(), bad])
    with pytest.raises(ValueError, match=r"column 'seed' must be int64.*'0'"):
        store.append([row(seed="0")])
    with pytest.raises(ValueError, match=r"column 'seed'"):
        store.append([row(seed=1.0)])
    with pytest.raises(ValueError, match=r"column 'trained_task_index'"):
        store.append([row(k=True)])
    with pytest.raises(ValueError, match=r"column 'value'"):
        store.append([row(value="0.5")])
    with pytest.raises(ValueError, match=r"column 'run_id' is None"):
        store.append([row(run=None)])
    with pytest.raises(ValueError, match=r"unknown column 'extra_col'"):
        store.append([row(extra_col=1)])
    with pytest.raises(ValueError, match=r"'dataset': 'gqa'"):  # the row is named by its key
        store.append([row(dataset="gqa", n=1.5)])
    # nothing was written by any failed append (validation precedes writing)
    assert store.read().empty and _visible_parts(tmp_path) == []


def test_numpy_scalars_are_accepted(tmp_path):
    store = R.ResultStore(tmp_path)
    assert store.append([row(seed=np.int64(3), value=np.float32(0.5), n=np.int32(7), scale=10)]) == 1
    df = store.read()
    assert df.loc[0, "seed"] == 3 and df.loc[0, "n"] == 7 and df.loc[0, "scale"] == 10.0


def test_nan_value_is_stored(tmp_path):
    store = R.ResultStore(tmp_path)
    store.append([row(value=float("nan"))])
    assert np.isnan(store.read()["value"].iloc[0])


# --------------------------------------------------------------------------------------
# atomicity
# --------------------------------------------------------------------------------------


def test_leftover_temp_file_is_ignored_then_cleaned(tmp_path):
    store = R.ResultStore(tmp_path)
    store.append([row()])
    junk = tmp_path / ".part-00000000000000000001-deadbeef.parquet.tmp"
    junk.write_bytes(b"PAR1 garbage from a killed writer")
    df = store.read()  # readers never list temp files
    assert len(df) == 1
    assert pd.read_parquet(tmp_path).shape[0] == 1  # neither do Arrow / pandas
    store.append([row(dataset="arc_easy")])
    assert not junk.exists()
    assert len(store.read()) == 2


def test_writer_failing_mid_write_leaves_only_complete_parts(tmp_path, monkeypatch):
    store = R.ResultStore(tmp_path)
    store.append([row()])

    def broken_write_table(table, where, **kw):
        where.write(b"PAR1" + b"\0" * 100)  # part of a file...
        raise OSError("disk full")  # ...then the writer dies

    monkeypatch.setattr(R.pq, "write_table", broken_write_table)
    with pytest.raises(OSError, match="disk full"):
        store.append([row(dataset="arc_easy")])
    monkeypatch.undo()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
    assert len(_visible_parts(tmp_path)) == 1
    df = store.read()
    assert list(df["dataset"]) == ["lambada"]
    assert not store.has(("r1", 1, "nl", "arc_easy", "accuracy"))
    assert store.append([row(dataset="arc_easy")]) == 1  # the retry writes it


def _append_then_sigkill(path):
    from mllmcl_ray import results as RR

    def dying_write_table(table, where, **kw):
        where.write(b"PAR1" + b"\1" * 64)
        where.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup handlers run

    RR.pq.write_table = dying_write_table
    RR.ResultStore(path).append([row(dataset="wsc")])


def test_process_killed_mid_write(tmp_path):
    store = R.ResultStore(tmp_path)
    store.append([row()])
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_append_then_sigkill, args=(str(tmp_path),))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    assert len(leftovers) == 1  # the partial file exists, hidden
    assert list(store.read()["dataset"]) == ["lambada"]
    assert store.append([row(dataset="wsc")]) == 1  # lock was released by the kill
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    assert sorted(store.read()["dataset"]) == ["lambada", "wsc"]


def _append_many(path, worker, n_batches):
    store = R.ResultStore(path)
    for b in range(n_batches):
        # overlapping keys across workers: datasets d0..d9 for trained task b
        store.append([row(k=b + 1, dataset=f"d{j}", value=float(worker)) for j in range(10)])
        store.append([row(k=b + 1, dataset=f"w{worker}-{j}") for j in range(3)])


def test_concurrent_appends_from_two_processes(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 5)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = R.ResultStore(tmp_path).read()
    # 5 tasks × (10 shared + 3 + 3 private) keys, each exactly once
    assert len(df) == 5 * 16
    assert not df.duplicated(list(R.RESULT_KEY)).any()


# --------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------


def test_prediction_store_round_trip_and_dedup(tmp_path):
    results = R.ResultStore(tmp_path)
    preds = R.PredictionStore(tmp_path)
    assert preds.path == tmp_path / "predictions"
    assert preds.append([pred("s0"), pred("s1", correct=0.0, output="blue", extra={"b": 1, "a": [2]})]) == 2
    assert preds.append([pred("s0", output="changed"), pred("s2")]) == 1
    df = preds.read().sort_values("sample_id").reset_index(drop=True)
    assert list(df["sample_id"]) == ["s0", "s1", "s2"]
    assert list(df["correct"]) == [1.0, 0.0, 1.0]
    assert df.loc[0, "output"] == "red"
    assert df.loc[1, "extra"] == '{"a": [2], "b": 1}'
    assert preds.has(("r1", 2, "vqa", "vqav2", "s1"))
    # predictions do not leak into the result rows read from the same root
    results.append([row()])
    assert len(results.read()) == 1 and len(preds.read()) == 3


def test_prediction_store_schema_errors(tmp_path):
    preds = R.PredictionStore(tmp_path)
    with pytest.raises(ValueError, match=r"prediction row 0 .*column 'extra' is not valid JSON"):
        preds.append([pred(extra="{not json")])
    with pytest.raises(ValueError, match=r"column 'correct'"):
        preds.append([pred(correct="yes")])
    with pytest.raises(ValueError, match=r"missing column 'sample_id'"):
        preds.append([{k: v for k, v in pred().items() if k != "sample_id"}])
    assert preds.read().empty
    assert list(preds.read().columns) == R.PREDICTION_SCHEMA.names


# --------------------------------------------------------------------------------------
# summary table
# --------------------------------------------------------------------------------------


def test_summary_table(tmp_path):
    store = R.ResultStore(tmp_path)
    store.append(
        [
            row(k=1, dataset="lambada", value=0.4),
            row(k=2, dataset="lambada", value=0.3),
            row(k=2, eval_task="vqa", dataset="vqav2", value=0.6),
            row(k=2, eval_task="vqa", dataset="vqav2", metric="judge_score", value=70.0),
            row(run="r0", k=1, dataset="lambada", value=0.45, method="lora"),
        ]
    )
    t = R.summary_table(store.read())
    assert list(t.columns) == [
        "run_id", "model", "method", "trained_task_index", "trained_task",
        "nl/lambada", "vqa/vqav2", "vqa/vqav2 [judge_score]",
    ]  # fmt: skip
    assert list(t["run_id"]) == ["r0", "r1", "r1"]
    assert list(t["trained_task_index"]) == [1, 1, 2]
    assert t["nl/lambada"].tolist() == [0.45, 0.4, 0.3]
    assert np.isnan(t.loc[1, "vqa/vqav2"]) and t.loc[2, "vqa/vqav2"] == 0.6
    assert t.loc[0, "method"] == "lora"
    only_acc = R.summary_table(store.read(), metrics=["accuracy"])
    assert "vqa/vqav2 [judge_score]" not in only_acc.columns
    assert R.summary_table(store.read({"run_id": "none"})).empty


# issue 11: results and predictions commit together; stale keys; corrupt parts
# ======================================================================================
import json as _json
from pathlib import Path as _Path

from mllmcl_ray.config import EvalConfig as _EvalConfig, EvalSet as _EvalSet
from mllmcl_ray.eval.engine.base import Engine as _Engine

_META = {"run_id": "r1", "study": "s", "model": "m", "scale": 1.0, "method": "naive",
         "method_params": "{}", "seed": 0}


class _RedEngine(_Engine):
    """Answers "red" to everything (no model)."""

    name = "fake"

    def __init__(self):
        from mllmcl_ray.models.templates import get_template

        self.template = get_template("micro")
        self.generated = 0

    def generate(self, requests):
        self.generated += len(requests)
        return ["red"] * len(requests)

    def loglikelihood(self, pairs):
        return [(0.0, True)] * len(pairs)


def _eval_file(path: _Path, answers: list[str]) -> _EvalSet:
    recs = [{"id": f"q{i}", "conversations": [{"from": "human", "value": "Colour?"},
                                               {"from": "gpt", "value": a}]}
            for i, a in enumerate(answers)]
    path.write_text(_json.dumps(recs))
    return _EvalSet(name="colour", path=str(path), kind="exact_ci", max_samples=None, max_new_tokens=3)


def _evaluator(root: _Path):
    from mllmcl_ray.eval.evaluator import Evaluator

    engines = []

    def factory(model):
        engines.append(_RedEngine())
        return engines[-1]

    ev = Evaluator(factory, R.ResultStore(root), R.PredictionStore(root), _EvalConfig(nl=False))
    return ev, engines


def _evaluate(ev, es, ckpt="ck2"):
    return ev.evaluate("model", run_meta=_META, trained_task_index=2, trained_task="colour",
                       vl_tasks=[(2, "colour", [es])], checkpoint_id=ckpt)


def test_kill_between_predictions_and_results_is_repaired_by_the_rerun(tmp_path, monkeypatch):
    es = _eval_file(tmp_path / "e.json", ["red", "blue", "red", "red"])
    ev, _ = _evaluator(tmp_path / "res")
    calls = []
    real = R.ResultStore.append

    def killed(self, rows):  # the writer dies right after the prediction part
        calls.append(len(rows))
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(R.ResultStore, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(ev, es)
    monkeypatch.setattr(R.ResultStore, "append", real)
    preds = R.PredictionStore(tmp_path / "res")
    assert len(preds) == 4 and len(R.ResultStore(tmp_path / "res")) == 0  # predictions first
    ev2, engines = _evaluator(tmp_path / "res")
    rows = _evaluate(ev2, es)
    assert list(rows["value"]) == [0.75]  # 3 of 4 answers are "red"
    assert len(engines) == 1 and engines[0].generated == 4  # the dataset was recomputed
    got = preds.read()
    assert sorted(got["sample_id"]) == ["q0", "q1", "q2", "q3"]  # replaced, not duplicated
    # a third run finds both committed and builds no engine
    ev3, engines3 = _evaluator(tmp_path / "res")
    assert len(_evaluate(ev3, es)) == 0 and engines3 == []


def test_rerun_recomputes_a_set_whose_eval_file_or_checkpoint_changed(tmp_path, capsys):
    es = _eval_file(tmp_path / "e.json", ["red", "blue"])
    ev, _ = _evaluator(tmp_path / "res")
    assert list(_evaluate(ev, es)["value"]) == [0.5]
    capsys.readouterr()
    # unchanged: nothing recomputed (so the evaluator's expected hash equals the suite's)
    assert len(_evaluate(_evaluator(tmp_path / "res")[0], es)) == 0
    # the eval file is fixed: 4 records, different content
    es = _eval_file(tmp_path / "e.json", ["red", "red", "red", "blue"])
    rows = _evaluate(_evaluator(tmp_path / "res")[0], es)
    assert list(rows["value"]) == [0.75] and list(rows["n"]) == [4]
    assert "recomputing colour/colour after task 2: the eval set changed" in capsys.readouterr().out
    stored = R.ResultStore(tmp_path / "res").read()
    assert list(stored["value"]) == [0.75] and list(stored["n"]) == [4]  # old row replaced
    assert sorted(R.PredictionStore(tmp_path / "res").read()["sample_id"]) == ["q0", "q1", "q2", "q3"]
    # another checkpoint id for the same key: recomputed and said
    rows = _evaluate(_evaluator(tmp_path / "res")[0], es, ckpt="ck2-retrained")
    assert len(rows) == 1
    assert "stored checkpoint ck2 ≠ ck2-retrained" in capsys.readouterr().out
    assert list(R.ResultStore(tmp_path / "res").read()["checkpoint_id"]) == ["ck2-retrained"]
    # another generation budget: recomputed
    es.max_new_tokens = 5
    assert len(_evaluate(_evaluator(tmp_path / "res")[0], es, ckpt="ck2-retrained")) == 1
    assert "stored max_new_tokens 3 ≠ 5" in capsys.readouterr().out


def test_an_empty_eval_set_is_never_stored_as_nan(tmp_path):
    from mllmcl_ray.errors import DataError

    es = _eval_file(tmp_path / "e.json", [])
    ev, _ = _evaluator(tmp_path / "res")
    with pytest.raises(DataError, match="scored 0 records"):
        _evaluate(ev, es)
    assert len(R.ResultStore(tmp_path / "res")) == 0 and len(R.PredictionStore(tmp_path / "res")) == 0


def test_corrupt_parts_are_skipped_named_and_repaired(tmp_path):
    s = R.ResultStore(tmp_path)
    s.append([row(k=2, value=0.1)])
    s.append([row(k=3, value=0.2)])
    bad = s._parts()[0]
    bad.write_bytes(b"garbage")
    fresh = R.ResultStore(tmp_path)  # no key cache
    with pytest.warns(R.UnreadablePartWarning, match=bad.name):
        assert list(fresh.read()["value"]) == [0.2]
    with pytest.warns(R.UnreadablePartWarning):
        assert not fresh.has(("r1", 2, "nl", "lambada", "accuracy"))  # k=2 counts as missing
        assert fresh.has(("r1", 3, "nl", "lambada", "accuracy"))
    moved = fresh.repair()
    assert [(m[0].name, m[1]) for m in moved] == [(bad.name, tmp_path / "quarantine" / bad.name)]
    assert "ArrowInvalid" in moved[0][2] or "Parquet" in moved[0][2]
    assert fresh.append([row(k=2, value=0.1)]) == 1  # the rerun writes the missing key again
    assert sorted(fresh.read()["value"]) == [0.1, 0.2]


def test_delete_groups_rewrites_only_the_matching_rows(tmp_path):
    s = R.ResultStore(tmp_path)
    s.append([row(k=2, dataset="a"), row(k=2, dataset="b"), row(k=2, dataset="a", metric="m2")])
    s.append([row(k=3, dataset="a")])
    n = s.delete_groups([{"run_id": "r1", "trained_task_index": 2, "eval_task": "nl",
                          "dataset": "a"}])
    assert n == 2
    left = s.read().sort_values(["trained_task_index", "dataset"])
    assert list(zip(left["trained_task_index"], left["dataset"])) == [(2, "b"), (3, "a")]
    assert {k[:5] for k in s.keys()} == {("r1", 2, "nl", "b", "accuracy"),
                                         ("r1", 3, "nl", "a", "accuracy")}
    assert s.append([row(k=2, dataset="a")]) == 1  # the key is free again


def test_rerun_of_stored_nl_and_vl_sets_recomputes_nothing(tmp_path):
    """The evaluator's expected eval-set hash equals what every suite stores (else each
    rerun would recompute): NL with both subset limits set, VL with OCR tokens."""
    from mllmcl_ray.eval.evaluator import Evaluator

    arc = tmp_path / "arc_easy.jsonl"
    arc.write_text("\n".join(_json.dumps({"id": f"a{i}", "question": f"q{i}", "choices": ["x", "y"],
                                           "label": i % 2}) for i in range(12)))
    nl = _EvalSet(name="arc_easy", path=str(arc), kind="arc", max_samples=7)
    vl = _eval_file(tmp_path / "e.json", ["red", "blue", "red"])
    vl.name, vl.ocr_tokens = "colour_ocr", True
    kw = dict(run_meta=_META, trained_task_index=2, trained_task="colour", nl_sets=[nl],
              vl_tasks=[(2, "colour", [vl])], checkpoint_id="ck")
    built = []
    cfg = _EvalConfig(nl_max_samples=9, seed=3)

    def factory(model):
        built.append(_RedEngine())
        return built[-1]

    rows = Evaluator(factory, R.ResultStore(tmp_path / "r"), R.PredictionStore(tmp_path / "r"),
                     cfg).evaluate("m", **kw)
    assert sorted(rows["dataset"]) == ["arc_easy", "colour_ocr"] and len(built) == 1
    assert int(rows[rows["dataset"] == "arc_easy"]["n"].iloc[0]) == 7  # min(7, 9)
    again = Evaluator(factory, R.ResultStore(tmp_path / "r"), R.PredictionStore(tmp_path / "r"),
                      cfg).evaluate("m", **kw)
    assert len(again) == 0 and len(built) == 1


def test_epoch_column_keys_epochs_and_reads_parts_written_before_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = R.ResultStore(tmp_path)
    # a part written before the column existed (its schema has no `epoch`)
    old_schema = pa.schema([f for f in R.RESULT_SCHEMA if f.name != "epoch"])
    pq.write_table(pa.Table.from_pylist([row(k=2, eval_task="vqa", dataset="vqav2")],
                                        schema=old_schema),
                   tmp_path / "part-00000000000000000001-old.parquet")
    df = store.read()
    assert list(df["epoch"]) == [0] and df["value"].tolist() == [0.5]
    assert ("r1", 2, "vqa", "vqav2", "accuracy", 0) in store.keys()
    assert store.has(("r1", 2, "vqa", "vqav2", "accuracy", 0))
    assert store.has(("r1", 2, "vqa", "vqav2", "accuracy"))  # the key without epoch = epoch 0
    # the same metric after epochs 1 and 2 of task 2 are rows of their own; the task end
    # (epoch 0, also what a row without `epoch` means) is there already
    assert store.append([row(k=2, eval_task="vqa", dataset="vqav2", value=0.2, epoch=1),
                         row(k=2, eval_task="vqa", dataset="vqav2", value=0.3, epoch=2),
                         row(k=2, eval_task="vqa", dataset="vqav2", value=0.9)]) == 2
    df = store.read(filters={"run_id": "r1"}).sort_values("epoch")
    assert df["epoch"].tolist() == [0, 1, 2] and df["value"].tolist() == [0.5, 0.2, 0.3]
    assert store.read(filters={"epoch": 1})["value"].tolist() == [0.2]
    assert not store.has(("r1", 2, "vqa", "vqav2", "accuracy", 3))
    assert R.RESULT_KEY[-1] == "epoch" and R.RESULT_SCHEMA.field("epoch").type == pa.int64()


# ===============================================================================