"""Report tests: synthetic result rows → ResultStore → build_report → figure JSON.

The only input is result rows written through ``ResultStore.append`` (the real path).
Each test reads the figure JSON the report embeds (``<script type="application/json"
id="fig-<name>">``) and checks the plotted numbers against numbers recomputed here from
the rows (by hand, or with the pure formulas of ``mllmcl_ray.metrics``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from mllmcl_ray import metrics as M
from mllmcl_ray.report import build_report, report_main
from mllmcl_ray.results import ResultStore

NL_DATASETS = {"lambada": "nlg", "arc_easy": "nlu", "arc_challenge": "nlu", "winogrande": "nlu"}


# --------------------------------------------------------------------------------------
# synthetic rows
# --------------------------------------------------------------------------------------


def _row(run, k, trained_task, eval_task, t, dataset, split, metric, value):
    return {
        "run_id": run["run_id"], "study": run["study"], "model": run["model"], "scale": float(run["scale"]),
        "method": run["method"], "method_params": run.get("method_params", "{}"), "seed": int(run["seed"]),
        "trained_task_index": int(k), "trained_task": trained_task, "eval_task": eval_task,
        "eval_task_index": int(t), "dataset": dataset, "split": split, "metric": metric,
        "value": float(value), "n": 100, "time": 1.7e9, "checkpoint_id": f"{run['run_id']}/task{k}",
        "eval_set_hash": "h", "prompt_version": "v1", "decoding": "{}",
    }


def _acc(rng, lo=0.05, hi=0.95):
    return float(np.round(rng.uniform(lo, hi), 4))


def make_rows(seed: int = 0, *, llava=True, continual=True, emt=True) -> list[dict]:
    """Three synthetic studies.

    * ``llava`` (Srivastava §3.1/3.2): 2 tasks (pretrain → llava), 3 Pythia scales ×
      {naive, soft_targets}; pythia-160m/naive has 2 seeds.
    * ``continual`` (Srivastava §3.3 / CoIN): pretrain → instruct (no VL eval) → vqa →
      ocr → ref, micro-s × {naive, msgm+rehearsal}; naive has 2 seeds.
    * ``emt`` (Zhai): EMT on mnist / cifar10 after tasks 1..3 (epochs), CLIP zero-shot once.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict] = []

    def nl_rows(run, k, trained):
        for ds, split in NL_DATASETS.items():
            rows.append(_row(run, k, trained, "nl", 1, ds, split, "accuracy", _acc(rng, 0.2, 0.7)))

    if llava:
        scales = {"pythia-160m": 1.6e8, "pythia-410m": 4.1e8, "pythia-1b": 1.0e9}
        for model, scale in scales.items():
            for method in ("naive", "soft_targets"):
                seeds = (0, 1) if (model, method) == ("pythia-160m", "naive") else (0,)
                for s in seeds:
                    run = dict(run_id=f"llava/{model}/{method}/s{s}", study="llava", model=model, scale=scale,
                               method=method, seed=s,
                               method_params='{"soft_targets": {"alpha": 0.01}}' if method == "soft_targets" else "{}")
                    nl_rows(run, 1, "pretrain")
                    nl_rows(run, 2, "llava")
                    for ds in ("vqav2", "gqa", "textvqa_ocr"):
                        rows.append(_row(run, 2, "llava", "llava", 2, ds, "vl", "accuracy", _acc(rng)))
    if continual:
        vl_tasks = {3: ("vqa", ["vqav2", "gqa"]), 4: ("ocr", ["textvqa_ocr"]), 5: ("ref", ["refcoco"])}
        names = {1: "pretrain", 2: "instruct", 3: "vqa", 4: "ocr", 5: "ref"}
        for method in ("naive", "msgm+rehearsal"):
            for s in ((0, 1) if method == "naive" else (0,)):
                run = dict(run_id=f"cl/micro-s/{method}/s{s}", study="continual", model="micro-s", scale=2.0e6,
                           method=method, seed=s,
                           method_params='{"msgm": {"alpha": 0.01, "rank": 8}, "rehearsal": {"fraction": 0.01}}'
                           if method != "naive" else "{}")
                for k in range(1, 6):
                    nl_rows(run, k, names[k])
                    for t, (task, dss) in vl_tasks.items():
                        if t <= k:
                            for ds in dss:
                                rows.append(_row(run, k, names[k], task, t, ds, "vl", "accuracy", _acc(rng)))
    if emt:
        for s in (0,):
            run = dict(run_id=f"emt/micro-s/lora/s{s}", study="emt", model="micro-s", scale=2.0e6,
                       method="lora", seed=s, method_params='{"lora": {"rank": 8}}')
            for k in (1, 2, 3):
                for ds in ("mnist", "cifar10"):
                    for metric in ("emt_exact", "emt_judge"):
                        rows.append(_row(run, k, f"cifar10-ep{k - 1}" if k > 1 else "pretrain", "emt", 90, ds,
                                         "emt", metric, _acc(rng)))
                    if k == 1:
                        rows.append(_row(run, 1, "pretrain", "emt", 90, ds, "emt", "clip_zero_shot", _acc(rng, 0.6, 0.99)))
    return rows


def write_store(path: Path, rows: list[dict]) -> Path:
    store = ResultStore(path)
    assert store.append(rows) == len(rows)
    return path


def read_figs(html_text: str) -> dict:
    figs = {}
    for m in re.finditer(r'<script type="application/json" id="fig-([^"]+)">(.*?)</script>', html_text, re.S):
        figs[m.group(1)] = json.loads(m.group(2))
    return figs


def trace_y(trace) -> list:
    """y values of a trace (plotly may encode numeric arrays as typed-array dicts)."""
    return _arr(trace["y"])


def _arr(v):
    if isinstance(v, dict) and "bdata" in v:  # plotly ≥ 6 typed-array encoding
        import base64

        dt = np.dtype(v["dtype"])
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=dt)
        if "shape" in v:
            a = a.reshape([int(x) for x in str(v["shape"]).split(",")])
        return a.tolist()
    return v


def _close(a, b, tol=1e-9):
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) and (b is None or math.isnan(b))
    return abs(float(a) - float(b)) <= tol


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One report over all three studies (built once: plotly.js is ~4 MB)."""
    tmp = tmp_path_factory.mktemp("report")
    rows = make_rows()
    write_store(tmp / "results", rows)
    out = build_report(tmp / "results", tmp / "out" / "report.html", title="Synthetic <study>")
    text = out.read_text(encoding="utf-8")
    df = ResultStore(tmp / "results").read()
    return {"out": out, "text": text, "figs": read_figs(text), "rows": rows, "df": df, "tmp": tmp}


def _rows(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


# --------------------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------------------


def test_report_file_structure(full):
    text, figs = full["text"], full["figs"]
    assert full["out"].name == "report.html" and full["out"].is_file()
    names = {"nl-forgetting-vs-vl", "nlu-vs-nlg", "delta-vs-scale", "vl-vs-scale", "accuracy-matrix",
             "cl-metrics-table", "emt"}
    assert set(figs) == names
    for n in names:  # a plot div and a section per figure
        assert text.count(f'id="plot-{n}"') == 1
        assert f'id="section-{n}"' in text
    # plotly.js inlined exactly once, no CDN / network reference
    assert len(re.findall(r"plotly\.js v\d+\.\d+\.\d+", text)) == 1
    # nothing loaded from elsewhere: no <script src=...>, no stylesheet / image links
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert not re.search(r"<(link|img|iframe)\b", text)
    # title escaped, counts in header: 7 + 3 + 1 runs of 6 + 2 + 1 configs
    assert "<title>Synthetic &lt;study&gt;</title>" in text
    runs = {r["run_id"] for r in full["rows"]}
    assert len(runs) == 11
    assert re.search(r'id="counts"><b>11</b> runs \(9 configs', text)
    assert f"<b>{len(full['rows'])}</b> result rows" in text
    # the synthetic studies have no rows for the EMT figures of tests/emt/test_emt_figures.py
    skipped = re.search(r'id="skipped">(.*?)</div>', text, re.S).group(1)
    assert re.findall(r"\((emt-[a-z-]+)\): needs", skipped) == [
        "emt-models", "emt-epochs", "emt-vision-resnet", "emt-vision-clip"]
    assert '<pre id="js-errors"></pre>' in text
    # captions cite the papers
    for cite in ("Fig. 2a", "Fig. 2b", "Fig. 3b", "Fig. 4a", "CoIN §3.1.3", "CoIN Tables 2–9", "Zhai et al."):
        assert cite in text
    # plain summary table, one row per config
    summary = text.split('id="section-summary"')[1].split('id="section-claims"')[0]
    assert summary.count("<tr") == 1 + 9
    # the report ends with the paper-claims table: header + one row per registered claim
    claims = text.split('id="section-claims"')[1]
    assert claims.count("<tr") == 1 + 4 and "Paper claims" in claims
    # atomic write leaves no temp file
    assert [p.name for p in full["out"].parent.iterdir()] == ["report.html"]


# --------------------------------------------------------------------------------------
# figure values = numbers from the rows
# --------------------------------------------------------------------------------------


def _nl(rows, run_id, k):
    rs = _rows(rows, run_id=run_id, trained_task_index=k, eval_task="nl")
    return {r["dataset"]: r["value"] for r in rs}


def _hand_delta(rows, run_id, k):
    """Δ by hand: harmonic over all NL datasets; simple mean per NLU / NLG split."""
    base, after = _nl(rows, run_id, 1), _nl(rows, run_id, k)

    def hm(d):
        return len(d) / sum(1 / v for v in d.values())

    def am(d, split):
        v = [x for n, x in d.items() if NL_DATASETS[n] == split]
        return sum(v) / len(v)

    return {"nl": hm(base) - hm(after), "nlu": am(base, "nlu") - am(after, "nlu"), "nlg": am(base, "nlg") - am(after, "nlg")}


def _hand_vl(rows, run_id, k):
    v = [r["value"] for r in _rows(rows, run_id=run_id, trained_task_index=k, split="vl", metric="accuracy")]
    return len(v) / sum(1 / x for x in v)


def test_accuracy_matrix_heatmap_equals_rows(full):
    fig, df, rows = full["figs"]["accuracy-matrix"], full["df"], full["rows"]
    traces = {t["meta"]["config"]: t for t in fig["data"]}
    # configs with VL tasks: 6 llava + 2 continual (the EMT run has none)
    assert len(traces) == 8
    assert sum(t.get("visible", True) is True for t in fig["data"]) == 1
    assert len(fig["layout"]["updatemenus"][0]["buttons"]) == 8
    # single-seed continual config: z == accuracy matrix × 100, blanks above the diagonal
    t = next(t for t in fig["data"] if t["meta"]["run_ids"] == ["cl/micro-s/msgm+rehearsal/s0"])
    tasks, m = M.accuracy_matrix(df, "cl/micro-s/msgm+rehearsal/s0", exclude=("nl",))
    assert tasks == ["vqa", "ocr", "ref"] == t["x"]
    z = _arr(t["z"])
    for i in range(3):
        for j in range(3):
            if j > i:
                assert z[i][j] is None
            else:
                assert _close(z[i][j], m[i, j] * 100)
    # and by hand: a[vqa][vqa] = harmonic mean of vqav2 and gqa after task 3
    v = {r["dataset"]: r["value"] for r in _rows(rows, run_id="cl/micro-s/msgm+rehearsal/s0", trained_task_index=3, eval_task="vqa")}
    assert _close(z[0][0], 100 * 2 / (1 / v["vqav2"] + 1 / v["gqa"]))
    # two-seed config: the mean of the seeds' matrices
    t2 = next(t for t in fig["data"] if t["meta"]["run_ids"] == ["cl/micro-s/naive/s0", "cl/micro-s/naive/s1"])
    m0 = M.accuracy_matrix(df, "cl/micro-s/naive/s0", exclude=("nl",))[1]
    m1 = M.accuracy_matrix(df, "cl/micro-s/naive/s1", exclude=("nl",))[1]
    z2 = _arr(t2["z"])
    assert _close(z2[2][1], (m0[2, 1] + m1[2, 1]) / 2 * 100)
    assert z2[1][2] is None


def test_nlu_nlg_bars_equal_hand_delta(full):
    fig, rows = full["figs"]["nlu-vs-nlg"], full["rows"]
    bars = {(t["meta"]["study"], t["meta"]["method"], t["meta"]["split"]): t for t in fig["data"]}
    # one facet per (study, method); runs of different studies are never averaged together
    assert {(st, m) for st, m, _ in bars} == {("llava", "naive"), ("llava", "soft_targets"),
                                              ("continual", "naive"), ("continual", "msgm+rehearsal")}
    nlg = bars[("llava", "soft_targets", "nlg")]
    assert nlg["x"] == ["pythia-160m", "pythia-410m", "pythia-1b", "Average"]
    ys = trace_y(nlg)
    hand = [_hand_delta(rows, f"llava/{m}/soft_targets/s0", 2)["nlg"] * 100 for m in ("pythia-160m", "pythia-410m", "pythia-1b")]
    for y, h in zip(ys, hand):
        assert _close(y, h)
    assert _close(ys[-1], sum(hand) / 3)  # Fig. 2b "Average": simple mean over models
    # naive: 160m has two seeds → mean, std error bar; continual micro-s after its last task (5)
    cl = bars[("continual", "naive", "nlu")]
    assert cl["x"] == ["micro-s", "Average"]
    d = [_hand_delta(rows, f"cl/micro-s/naive/s{s}", 5)["nlu"] * 100 for s in (0, 1)]
    assert _close(trace_y(cl)[0], sum(d) / 2)
    nlu = bars[("llava", "naive", "nlu")]
    assert nlu["x"][0] == "pythia-160m"  # smallest scale first
    d160 = [_hand_delta(rows, f"llava/pythia-160m/naive/s{s}", 2)["nlu"] * 100 for s in (0, 1)]
    i160 = nlu["x"].index("pythia-160m")
    assert _close(trace_y(nlu)[i160], np.mean(d160))
    assert _close(_arr(nlu["error_y"]["array"])[i160], np.std(d160, ddof=1), 1e-6)
    assert nlu["error_y"]["visible"] is True
    assert "Δ (points)" in json.dumps(fig["layout"], ensure_ascii=False)


def test_nl_forgetting_vs_vl_points(full):
    fig, rows = full["figs"]["nl-forgetting-vs-vl"], full["rows"]
    tr = {t["meta"]["series"]: t for t in fig["data"]}
    assert set(tr) == {"naive [llava]", "soft_targets [llava]", "naive [continual]", "msgm+rehearsal [continual]"}
    st = tr["soft_targets [llava]"]
    assert st["text"] == ["pythia-160m", "pythia-410m", "pythia-1b"]
    for i, m in enumerate(st["text"]):
        run = f"llava/{m}/soft_targets/s0"
        assert _close(_arr(st["x"])[i], _hand_vl(rows, run, 2) * 100)
        assert _close(_arr(st["y"])[i], _hand_delta(rows, run, 2)["nl"] * 100)
    # continual runs: after the last task (5), VL accuracy is cumulative over all VL datasets
    msgm = tr["msgm+rehearsal [continual]"]
    run = "cl/micro-s/msgm+rehearsal/s0"
    assert _close(_arr(msgm["x"])[0], _hand_vl(rows, run, 5) * 100)
    assert _close(_arr(msgm["y"])[0], _hand_delta(rows, run, 5)["nl"] * 100)
    naive = tr["naive [llava]"]
    i = naive["text"].index("pythia-160m")
    xs = [_hand_vl(rows, f"llava/pythia-160m/naive/s{s}", 2) * 100 for s in (0, 1)]
    assert _close(_arr(naive["x"])[i], np.mean(xs))
    assert _close(_arr(naive["error_x"]["array"])[i], np.std(xs, ddof=1), 1e-6)
    assert "%" in fig["layout"]["xaxis"]["title"]["text"]
    assert "Δ (points" in fig["layout"]["yaxis"]["title"]["text"]


def test_scale_figures(full):
    rows = full["rows"]
    fig = full["figs"]["delta-vs-scale"]
    assert fig["layout"]["xaxis"]["type"] == "log"
    lines = {(t["meta"]["method"], t["meta"]["k"]): t for t in fig["data"] if t["meta"]["study"] == "llava"}
    cl = {(t["meta"]["method"], t["meta"]["k"]): t for t in fig["data"] if t["meta"]["study"] == "continual"}
    # llava: k = 2 for naive / soft_targets; continual: k = 2..5 per method (Fig. 5b)
    assert set(lines) == {("naive", 2), ("soft_targets", 2)}
    assert {k for (m, k) in cl if m == "msgm+rehearsal"} == {2, 3, 4, 5}
    assert cl[("naive", 2)]["meta"]["trained_task"] == "instruct"
    assert _arr(cl[("naive", 2)]["x"]) == [2.0e6]
    st = lines[("soft_targets", 2)]
    assert _arr(st["x"]) == [1.6e8, 4.1e8, 1.0e9]
    for y, m in zip(trace_y(st), ("pythia-160m", "pythia-410m", "pythia-1b")):
        assert _close(y, _hand_delta(rows, f"llava/{m}/soft_targets/s0", 2)["nl"] * 100)
    # per trained task (Fig. 5b): msgm+rehearsal after task 4
    assert _close(trace_y(cl[("msgm+rehearsal", 4)])[0], _hand_delta(rows, "cl/micro-s/msgm+rehearsal/s0", 4)["nl"] * 100)
    assert cl[("msgm+rehearsal", 4)]["meta"]["trained_task"] == "ocr"

    fig = full["figs"]["vl-vs-scale"]
    lines = {(t["meta"]["method"], t["meta"]["k"]): t for t in fig["data"] if t["meta"]["study"] == "llava"}
    cl = {(t["meta"]["method"], t["meta"]["k"]): t for t in fig["data"] if t["meta"]["study"] == "continual"}
    # task 2 of the continual runs ("instruct") has no VL evaluation: no line for it
    assert {k for (m, k) in cl if m == "msgm+rehearsal"} == {3, 4, 5}
    nv = lines[("naive", 2)]
    assert _arr(nv["x"]) == [1.6e8, 4.1e8, 1.0e9]
    assert _close(trace_y(nv)[0], np.mean([_hand_vl(rows, f"llava/pythia-160m/naive/s{s}", 2) for s in (0, 1)]) * 100)
    assert _close(trace_y(cl[("naive", 3)])[0],
                  np.mean([_hand_vl(rows, f"cl/micro-s/naive/s{s}", 3) for s in (0, 1)]) * 100)


def test_cl_metrics_table_coin_layout(full):
    fig, df = full["figs"]["cl-metrics-table"], full["df"]
    t = fig["data"][0]
    cols = t["meta"]["columns"]
    assert cols[:5] == ["study", "method", "model", "seeds", "line"]
    assert cols[-4:] == ["MAA", "BWT (CoIN, 1/T)", "MFT", "MFN"]
    assert {"llava", "vqa", "ocr", "ref"} <= set(cols)
    cells = dict(zip(cols, t["cells"]["values"]))
    i = next(i for i, (m, mo) in enumerate(zip(cells["method"], cells["model"]))
             if m.startswith("msgm+rehearsal") and mo == "micro-s")
    summ = M.cl_summary(df).set_index("run_id").loc["cl/micro-s/msgm+rehearsal/s0"]
    for c in ("maa", "mft", "mfn"):
        assert cells[c.upper()][i] == f"{summ[c] * 100:.2f}"
    tasks, m = M.accuracy_matrix(df, "cl/micro-s/msgm+rehearsal/s0", exclude=("nl",))
    # CoIN's printed BWT: Σ_{t<T}(a[T][t] − a[t][t]) / T, here T = 3 tasks
    coin_bwt = sum(m[2, j] - m[j, j] for j in range(2)) / 3
    assert cells["BWT (CoIN, 1/T)"][i] == f"{coin_bwt * 100:.2f}"
    assert abs(summ["bwt"] - coin_bwt) > 1e-6  # GEM's 1/(T−1) differs
    assert cells["line"][i].startswith("after learning") and cells["line"][i + 1].startswith("final")
    for j, task in enumerate(tasks):
        assert cells[task][i] == f"{m[j, j] * 100:.2f}"  # a[t][t]
        assert cells[task][i + 1] == f"{m[2, j] * 100:.2f}"  # a[T][t]
    assert cells["llava"][i] == "—"
    # two seeds: mean ± std
    k = next(i for i, (me, mo) in enumerate(zip(cells["method"], cells["model"])) if me == "naive" and mo == "micro-s")
    s = M.cl_summary(df).set_index("run_id").loc[["cl/micro-s/naive/s0", "cl/micro-s/naive/s1"], "maa"] * 100
    assert cells["MAA"][k] == f"{s.mean():.2f} ± {s.std(ddof=1):.2f}"
    assert cells["seeds"][k] == "2"


def test_emt_figure_values(full):
    fig, rows = full["figs"]["emt"], full["rows"]
    tr = [t for t in fig["data"]]
    emt = {(t["meta"]["dataset"], t["meta"]["metric"]): t for t in tr if t["meta"]["kind"] == "emt"}
    assert set(emt) == {(d, m) for d in ("cifar10", "mnist") for m in ("emt_exact", "emt_judge")}
    t = emt[("mnist", "emt_judge")]
    assert _arr(t["x"]) == [1.0, 2.0, 3.0]
    want = [r["value"] * 100 for r in sorted(_rows(rows, dataset="mnist", metric="emt_judge"), key=lambda r: r["trained_task_index"])]
    for y, w in zip(trace_y(t), want):
        assert _close(y, w)
    clip = [t for t in tr if t["meta"]["kind"] == "clip_zero_shot" and t["meta"]["dataset"] == "cifar10"]
    assert len(clip) == 1
    cz = _rows(rows, dataset="cifar10", metric="clip_zero_shot")[0]["value"] * 100
    assert _arr(clip[0]["x"]) == [1.0, 3.0] and all(_close(y, cz) for y in trace_y(clip[0]))
    # the legend names each (config, metric) once although it appears in two facets
    assert sum(1 for t in tr if t.get("showlegend") is not False and t["meta"]["kind"] == "emt") == 2


# --------------------------------------------------------------------------------------
# missing data, errors, CLI
# --------------------------------------------------------------------------------------


def test_figures_skipped_without_their_data(tmp_path):
    # only the EMT study: no NL / VL rows → every Srivastava / CoIN figure is skipped
    write_store(tmp_path / "res", make_rows(1, llava=False, continual=False))
    out = build_report(tmp_path / "res", tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    figs = read_figs(text)
    assert set(figs) == {"emt"}
    assert len(re.findall(r"plotly\.js v\d+\.\d+\.\d+", text)) == 1  # inlined with the first figure drawn
    skipped = text.split('id="skipped"')[1].split("</div>")[0]
    for name in ("nl-forgetting-vs-vl", "nlu-vs-nlg", "delta-vs-scale", "vl-vs-scale", "accuracy-matrix", "cl-metrics-table"):
        assert f"({name})" in skipped
        assert f'id="plot-{name}"' not in text
    assert "(emt)" not in skipped


def test_nl_only_rows_draw_nl_figures_only(tmp_path):
    rows = [r for r in make_rows(2, continual=False, emt=False) if r["split"] != "vl"]
    write_store(tmp_path / "res", rows)
    figs = read_figs(build_report(tmp_path / "res", tmp_path / "r.html").read_text(encoding="utf-8"))
    assert set(figs) == {"nlu-vs-nlg", "delta-vs-scale"}


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nowhere", tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no result rows in .*empty.*mllmcl"):
        build_report(tmp_path / "empty", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_main_cli(tmp_path, capsys):
    write_store(tmp_path / "res", make_rows(3, llava=False, emt=False))
    out = tmp_path / "sub" / "rep.html"
    out.parent.mkdir()
    out.write_text("old")
    assert report_main([str(tmp_path / "res"), "-o", str(out), "--title", "CL run"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    assert "<title>CL run</title>" in text and "accuracy-matrix" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["rep.html"]
    assert report_main([str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "missing" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# paper claims table (report/claims.py)
# --------------------------------------------------------------------------------------
from mllmcl_ray.report import claims as C  # noqa: E402

NL4 = {"lambada": "nlg", "arc_easy": "nlu", "arc_challenge": "nlu", "winogrande": "nlu"}


def _claim_run(rows, *, method, seed, recipe, dg, du, vl=None, zero_shot=None, model="pythia-160m"):
    """A run whose NL accuracies fall from 0.6 by dg (Lambada) and du (each NLU set), so
    Δ_NLG = dg and Δ_NLU = du exactly; VL accuracy `vl` after its task, `zero_shot` after
    alignment."""
    run = dict(run_id=f"{recipe}/{model}/{method}/s{seed}", study=recipe, model=model,
               scale=1.6e8, method=method, seed=seed)
    last = (2, "llava") if recipe == "llava" else (3, "vqa")
    for ds, split in NL4.items():
        rows.append(_row(run, 1, "base", "nl", 1, ds, split, "accuracy", 0.6))
        rows.append(_row(run, last[0], last[1], "nl", 1, ds, split, "accuracy",
                         0.6 - (dg if split == "nlg" else du)))
    task = "llava" if recipe == "llava" else "vqa"
    if vl is not None:
        rows.append(_row(run, last[0], last[1], task, last[0], "vqav2", "vl", "accuracy", vl))
    if zero_shot is not None:
        rows.append(_row(run, 1, "zero_shot", task, last[0], "vqav2", "vl", "accuracy", zero_shot))


def _hm_delta(dg, du):  # Δ_NL with the harmonic ω over 1 NLG + 3 NLU sets, base 0.6
    return 0.6 - 4 / (1 / (0.6 - dg) + 3 / (0.6 - du))


def _df(rows):
    import pandas as pd
    return pd.DataFrame(rows)


def test_claims_hold_with_exact_numbers():
    rows = []
    for s, (dg_n, dg_st) in enumerate([(0.20, 0.05), (0.15, 0.02)]):
        _claim_run(rows, method="naive", seed=s, recipe="llava", dg=dg_n, du=0.02, vl=0.40,
                   zero_shot=0.01)
        _claim_run(rows, method="soft_targets", seed=s, recipe="llava", dg=dg_st, du=0.0,
                   vl=0.35, zero_shot=0.01)
        _claim_run(rows, method="naive", seed=s, recipe="continual", dg=0.3, du=0.05)
        _claim_run(rows, method="msgm+rehearsal", seed=s, recipe="continual", dg=0.1, du=0.0)
    t = C.claims_table(_df(rows)).set_index("claim")
    assert set(t["verdict"]) == {C.HOLDS}
    assert (t["seeds"] == 2).all()
    st = t.loc[C.CLAIMS["soft_targets_below_naive_llava"].text, "this run"]
    g = [100 * (_hm_delta(0.20, 0.02) - _hm_delta(0.05, 0.0)),
         100 * (_hm_delta(0.15, 0.02) - _hm_delta(0.02, 0.0))]
    assert st == f"{np.mean(g):.2f} ± {np.std(g, ddof=1):.2f} (s0: {g[0]:.2f}, s1: {g[1]:.2f})"
    # NLG − NLU per seed: mean over the 4 runs of that seed (points)
    nl = C.nlg_minus_nlu(_df(rows))
    assert nl[0] == pytest.approx(100 * np.mean([0.20 - 0.02, 0.05, 0.3 - 0.05, 0.1]))
    # fine-tuned 0.40 / 0.35 vs zero-shot 0.01 on the LLaVA runs: mean 36.5 points per seed
    assert C.finetuned_minus_zero_shot(_df(rows)) == {0: pytest.approx(36.5), 1: pytest.approx(36.5)}
    md = C.claims_markdown(_df(rows))
    assert md.count("| holds |") == 4 and "Srivastava et al. Table 1" in md


def test_claims_fail_and_lack_seeds():
    rows = []
    # seed 1: Soft Targets forget more than naive -> the claim does not hold
    for s, (dg_n, dg_st) in enumerate([(0.20, 0.05), (0.05, 0.20)]):
        _claim_run(rows, method="naive", seed=s, recipe="llava", dg=dg_n, du=0.0)
        _claim_run(rows, method="soft_targets", seed=s, recipe="llava", dg=dg_st, du=0.0)
    # continual recipe: one seed only
    _claim_run(rows, method="naive", seed=0, recipe="continual", dg=0.3, du=0.0)
    _claim_run(rows, method="msgm+rehearsal", seed=0, recipe="continual", dg=0.1, du=0.0)
    t = C.claims_table(_df(rows)).set_index("claim")
    v = t["verdict"]
    assert v[C.CLAIMS["soft_targets_below_naive_llava"].text] == C.DOES_NOT_HOLD
    assert v[C.CLAIMS["msgm_rehearsal_below_naive_continual"].text] == C.NOT_ENOUGH_SEEDS
    # no zero-shot rows: nothing measured
    zs = C.CLAIMS["vl_finetuned_above_zero_shot"].text
    assert v[zs] == C.NOT_ENOUGH_SEEDS and t.loc[zs, "this run"] == "no rows"
    # a small fine-tuning gain (5 points) is not "≫" (threshold 10)
    rows2 = []
    for s in (0, 1):
        _claim_run(rows2, method="naive", seed=s, recipe="llava", dg=0.1, du=0.0, vl=0.30,
                   zero_shot=0.25)
    assert C.claims_table(_df(rows2), ["vl_finetuned_above_zero_shot"])["verdict"][0] == C.DOES_NOT_HOLD
    assert C.verdict([1.0, -0.1]) == C.DOES_NOT_HOLD and C.verdict([0.5, 0.2]) == C.HOLDS
    with pytest.raises(KeyError, match="unknown claim"):
        C.claims_table(_df(rows), ["nope"])


def test_results_cli_prints_claims(tmp_path, capsys):
    from mllmcl_ray.cli import main

    rows = []
    for s in (0, 1):
        _claim_run(rows, method="naive", seed=s, recipe="llava", dg=0.2, du=0.0)
        _claim_run(rows, method="soft_targets", seed=s, recipe="llava", dg=0.05, du=0.0)
    write_store(tmp_path / "res", rows)
    assert main(["results", "--claims", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "## Paper claims" in out
    line = next(x for x in out.splitlines() if "Soft Targets forget less" in x)
    assert line.rstrip().endswith("| holds |")


def test_claims_for_a_study_are_its_own():
    import pandas as pd

    assert C.claims_for(pd.DataFrame({"study": ["coin", "coin"]})) == ["vl_finetuned_above_zero_shot"]
    assert C.claims_for(pd.DataFrame({"study": ["emt"]})) == []
    assert C.claims_for(pd.DataFrame({"study": ["coin-alphabet-10type-vol0.4", "coin-baselines"]})) == [
        "vl_finetuned_above_zero_shot"]
    assert C.claims_for(pd.DataFrame({"study": ["unlisted"]})) == list(C.CLAIMS)
    assert len(C.claims_table(pd.DataFrame({"study": ["coin"], "eval_task": ["x"], "split": ["vl"],
                                            "metric": ["accuracy"], "trained_task": ["t"],
                                            "run_id": ["r"]}))) == 1
