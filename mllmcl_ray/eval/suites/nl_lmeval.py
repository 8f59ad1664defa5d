"""The language suite run by lm-evaluation-harness itself (``eval.nl_backend: lm_eval``).

lm-eval is the reference the papers' NL numbers come from, so published numbers are
comparable only when lm-eval computes them. This backend runs lm-eval's ``HFLM`` over the
MLLM's language model (the decoder and LM head of the checkpoint, shared, not copied)
on lm-eval's own task definitions:

============== ==================== ==========================================
our dataset    lm-eval task         scoring (lm-eval's)
============== ==================== ==========================================
lambada*       ``lambada_standard`` last word is the greedy continuation (acc)
arc_easy*      ``arc_easy``         argmax of summed log-likelihood (acc)
arc_challenge* ``arc_challenge``    same
winogrande*    ``winogrande``       partial evaluation (acc)
wsc*           ``wsc273``           partial evaluation (acc)
============== ==================== ==========================================

Data: when the EvalSet's ``path`` is a local file (the micro world, or a prepared copy of
the real sets), its records — the seeded subset `suites.nl` scores, so both backends see
the same samples — are written in the task's Hugging Face schema to a JSON Lines file
and lm-eval's own task YAML (and its helper module, ``utils.py`` /
``preprocess_winogrande.py``, read from the installed lm-eval) is pointed at it
(``dataset_path: json``). With an empty ``path`` lm-eval loads its hub dataset (HF cache;
set ``HF_DATASETS_OFFLINE=1`` on offline clusters) and `max_samples` becomes lm-eval's
``limit`` (its first N documents, not our seeded subset).

Every row records the lm-eval version and task (``decoding``: backend ``lm_eval``,
``lm_eval_version``, ``lm_eval_task``; ``prompt_version``: ``lm-eval-<version>:<task>``).
The project's own scorer (`suites.nl`, the default) is held to this backend by
tests/eval/test_nl_lmeval_parity.py: equal accuracies on every micro NL set.
"""
from __future__ import annotations

import copy
import json
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

from ...config import ConfigError, EvalSet
from .common import SuiteResult, content_hash
from .nl import load_nl_docs, nl_kind, nl_split

LM_EVAL_TASKS = {"lambada": "lambada_standard", "arc_easy": "arc_easy",
                 "arc_challenge": "arc_challenge", "winogrande": "winogrande", "wsc": "wsc273"}
_TASK_DIRS = {"lambada_standard": "lambada", "arc_easy": "arc", "arc_challenge": "arc",
              "winogrande": "winogrande", "wsc273": "wsc273"}
_DROP_KEYS = ("task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "training_split",
              "validation_split", "test_split", "fewshot_split")


def import_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise ConfigError("eval.nl_backend 'lm_eval' needs lm-evaluation-harness: "
                          f"pip install 'lm-eval[hf]' (import failed: {e})") from None
    return lm_eval


def lm_eval_task(eval_set: EvalSet, kind: str) -> str:
    """lm-eval's task for one of our NL datasets (by kind, ARC split by name)."""
    if kind == "arc":
        return "arc_challenge" if "challenge" in eval_set.name.lower() else "arc_easy"
    return LM_EVAL_TASKS[kind]


def hf_doc(kind: str, doc: dict) -> dict:
    """One record in the Hugging Face schema lm-eval's task reads (plus our ``id``)."""
    out: dict[str, Any] = {"id": str(doc.get("id", ""))}
    if kind == "lambada":
        text = doc["text"] if "text" in doc else (
            str(doc["context"]).rstrip() + " " + str(doc["target"]).strip())
        out["text"] = text
    elif kind == "arc":
        ch = doc["choices"]
        if isinstance(ch, dict):
            out.update(question=doc["question"], choices=ch, answerKey=doc["answerKey"])
        else:
            labels = list(string.ascii_uppercase[:len(ch)])
            gold = int(doc["label"] if "label" in doc else doc["answer"])
            out.update(question=doc["question"], choices={"text": list(ch), "label": labels},
                       answerKey=labels[gold])
    elif kind == "winogrande":
        out.update(sentence=doc["sentence"], option1=doc["option1"], option2=doc["option2"],
                   answer=str(doc["answer"]))
    elif kind == "wsc":
        out.update(text=doc["text"], pronoun=doc["pronoun"], pronoun_loc=int(doc["pronoun_loc"]),
                   options=list(doc["options"]),
                   label=int(doc["answer"] if "answer" in doc else doc["label"]))
    else:
        raise ConfigError(f"no lm-eval task for NL kind {kind!r}")
    return out


def write_local_task(task: str, docs: list[dict], kind: str, out_dir: Path) -> str:
    """lm-eval's own `task` YAML pointed at `docs` (JSON Lines); returns the local task name."""
    lm_eval = import_lm_eval()
    src_dir = Path(lm_eval.__file__).parent / "tasks" / _TASK_DIRS[task]
    src = src_dir / f"{'default' if task in ('winogrande', 'wsc273') else task}.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    for helper in src_dir.glob("*.py"):
        shutil.copy(helper, out_dir / helper.name)
    data = out_dir / f"{task}.jsonl"
    data.write_text("".join(json.dumps(hf_doc(kind, d)) + "\n" for d in docs))
    blocks = {k: v for k, v in _yaml_blocks(src).items() if k not in _DROP_KEYS}
    kept = [line for block in blocks.values() for line in block]
    name = f"mllmcl_{task}"
    head = [f"task: {name}", "dataset_path: json", "dataset_name: null",
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}", "test_split: test"]
    (out_dir / f"{name}.yaml").write_text("\n".join(head + kept) + "\n")
    return name


def _yaml_blocks(path: Path) -> dict[str, list[str]]:
    """A task YAML's top-level keys with their lines, ``include:`` resolved (the included
    file's keys first, this file's override them). Read as text: lm-eval's YAML has
    ``!function`` tags that `yaml.safe_load` rejects."""
    blocks: dict[str, list[str]] = {}
    key = None
    for line in path.read_text().splitlines():
        if line[:1] not in (" ", "-", "") and ":" in line:
            key = line.split(":", 1)[0].strip()
            blocks[key] = []
        if key is not None:
            blocks[key].append(line)
    if "include" in blocks:
        base = _yaml_blocks(path.parent / blocks.pop("include")[0].split(":", 1)[1].strip())
        base.update(blocks)
        blocks = base
    return blocks


def causal_lm(engine):
    """A `PreTrainedModel` causal LM over the engine's language model (weights shared)."""
    import torch
    from transformers import AutoModelForCausalLM

    mllm = getattr(engine, "mllm", None)
    if mllm is None:  # a plain causal LM engine
        return engine.model
    from ...models.build import parts, unwrap

    p = parts(mllm.model)
    cfg = unwrap(mllm.model).config.text_config
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(cfg)
    setattr(lm, lm.base_model_prefix, p["language_model"])  # gpt_neox / model
    lm.set_output_embeddings(p["lm_head"])
    lm.eval()
    left = [n for n, t in list(lm.named_parameters()) + list(lm.named_buffers())
            if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"causal LM over the MLLM left tensors unset: {left[:3]}")
    return lm


def run_lm_eval_set(engine, eval_set: EvalSet, *, max_samples: int | None = None, seed: int = 0,
                    batch_size: int = 32) -> SuiteResult:
    """Score one NL dataset with lm-evaluation-harness (HFLM over the engine's LM)."""
    lm_eval = import_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if getattr(engine, "model", None) is None or not hasattr(engine, "tokenizer"):
        raise ConfigError(f"eval.nl_backend 'lm_eval' runs lm-eval's HFLM: use eval.backend "
                          f"'transformers' for the NL suite (engine {engine.name!r})")
    limit = [m for m in (eval_set.max_samples, max_samples) if m is not None]
    n_max = min(limit) if limit else None
    local = bool(eval_set.path) and Path(eval_set.path).exists()
    docs = load_nl_docs(eval_set, n_max, seed) if local else []
    kind = nl_kind(eval_set.name, eval_set.kind, docs[0] if docs else None)
    task = lm_eval_task(eval_set, kind)
    version = getattr(lm_eval, "__version__", "")
    tok = copy.deepcopy(engine.tokenizer)  # HFLM sets padding on the tokenizer it gets
    lm = HFLM(pretrained=causal_lm(engine), tokenizer=tok, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="mllmcl-lmeval-") as tmp:
        if local:
            name = write_local_task(task, docs, kind, Path(tmp))
            tm = TaskManager(include_path=tmp, include_defaults=False)
            kw: dict[str, Any] = {}
        else:
            name, tm, kw = task, TaskManager(), {"limit": n_max}
        out = simple_evaluate(model=lm, tasks=[name], task_manager=tm, log_samples=True,
                              bootstrap_iters=0, verbosity="ERROR", **kw)
    res = out["results"][name]
    metrics = {"accuracy": float(res["acc,none"])}
    if "perplexity,none" in res:
        metrics["perplexity"] = float(res["perplexity,none"])
    preds = []
    for s in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
        lls = [float(r[0]) for r in s["filtered_resps"]]
        preds.append({"id": str(s["doc"].get("id", s["doc_id"])), "correct": float(s["acc"]),
                      "loglikelihoods": lls})
    decoding = {"backend": "lm_eval", "lm_eval_version": version, "lm_eval_task": task,
                "lm_eval_model": "hf", "batch_size": batch_size}
    return SuiteResult(dataset=eval_set.name, split=nl_split(kind), metrics=metrics,
                       n=len(preds), eval_set_hash=content_hash([kind, docs]) if local else
                       content_hash([task, n_max]), prompt_version=f"lm-eval-{version}:{task}",
                       decoding=decoding, predictions=preds)
