"""Vision-encoder forgetting (Zhai et al. §3): supervised fine-tuning of an image
classifier forgets the classes it was pretrained on.

Two experiments, each one Ray Tune trial per (dataset, seed) (`studies/emt_vision.py`);
with ``workers >= 1`` a trial trains under a Ray Train `TorchTrainer` (DDP over gloo/NCCL,
`prepare_model` / `prepare_data_loader`), otherwise in the trial's own process. Rank 0
appends rows to the study's Parquet store (results.py schema, split ``vision``) after
every epoch, so a plot needs nothing but the store.

§3.1 ``resnet`` (Fig. 2): a ResNet-18 (`transformers.ResNetForImageClassification` from
``ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2])``; the micro preset a smaller
ResNet of the same layout) with one head over all classes is trained from scratch on the
first 50 % of the classes (the set's label order) for ``pretrain_epochs``, then on the
other 50 % for ``finetune_epochs`` (the classes do not overlap; a new optimizer and lr
schedule for the fine-tuning phase). After every epoch: accuracy of the pretrained
classes and of the fine-tuned classes on the training images (the paper plots training
accuracy of the first 50 %, "since the NC theory mainly focuses on the training loss")
and on the test images. Rows: trained_task_index = epoch (1-based over both phases),
trained_task ``pretrain`` / ``finetune``, eval_task ``pretrained_classes`` /
``finetuned_classes``, metric ``train_accuracy`` / ``test_accuracy``.

§3.2 ``clip`` (Fig. 3, Table 10): the vision encoder of a CLIP checkpoint (paper: OpenAI
ViT-L/14, `openai/clip-vit-large-patch14`; micro: the micro CLIP) is fine-tuned on one
dataset with cross-entropy over the similarities of the image embedding to the frozen text
embeddings of "label + short description" prompts (`describe`), at CLIP's logit scale.
Before fine-tuning (epoch 0) and after every epoch: zero-shot accuracy with those prompts
on the test split of the fine-tuned set (``in_domain``) and of every other set
(``out_of_domain``). Rows: trained_task_index = epoch + 1 (1 = before fine-tuning),
trained_task ``epoch-<e>``, eval_task ``in_domain`` / ``out_of_domain``, dataset = the set
evaluated, metric ``clip_zero_shot``.

The text tower stays frozen in §3.2 (the paper fine-tunes "the vision encoder"); the
descriptions of App. B are not in the text we have, so `DESCRIPTIONS` holds ours (named
as a deviation in docs/studies.md).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

STUDY = "emt_vision"
SPLIT = "vision"
EXPERIMENTS = ("resnet", "clip")

# "label + short description" (Zhai §3.2); App. B's own examples are not in our copy.
DESCRIPTIONS = {
    "mnist": "a handwritten digit", "digits": "a handwritten digit",
    "cifar10": "a small photo of an object", "cifar100": "a small photo of an object",
    "miniimagenet": "a photo of an object", "shapes": "a shape drawn on a background",
}
DESCRIPTION_FORMAT = "{label}, {description}"


def describe(dataset: str, label: str) -> str:
    return DESCRIPTION_FORMAT.format(label=str(label).replace("_", " "),
                                     description=DESCRIPTIONS.get(dataset, "an image"))


@dataclass
class VisionSet:
    """One classification set: LLaVA-format train/test JSON with ``label`` (and ``labels``)."""

    name: str
    train: str  # train JSON path
    test: str  # test JSON path
    image_root: str  # images directory


@dataclass
class ResNetSpec:
    """The ResNet of §3.1 (ResNetConfig fields)."""

    name: str = "resnet-18"  # result rows' model column
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # blocks per stage (18: 2,2,2,2)
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # stage widths
    embedding_size: int = 64  # stem width


@dataclass
class VisionStudyConfig:
    """One trial: one experiment on one dataset with one seed."""

    experiment: str  # "resnet" (§3.1) or "clip" (§3.2)
    dataset: str  # the set trained on (name in `sets`)
    sets: list[VisionSet]  # every set (clip: the others are out-of-domain)
    results: str  # result store directory
    seed: int = 0
    image_size: int = 32  # resnet: images resized to this square size
    resnet: ResNetSpec = field(default_factory=ResNetSpec)
    pretrain_epochs: int = 100  # §3.1 (paper 100)
    finetune_epochs: int = 100  # §3.1 (paper 100); §3.2 epochs of CLIP fine-tuning (paper 15)
    clip: str = "openai/clip-vit-large-patch14"  # §3.2 CLIP checkpoint (both towers)
    lr: float = 1e-3  # §3.1 AdamW peak lr (cosine per phase)
    clip_lr: float = 1e-5  # §3.2 AdamW lr of the vision encoder
    batch_size: int = 128  # per worker
    max_train: int | None = None  # cap on training images per set (None: all)
    max_test: int | None = None  # cap on test images per set (None: all)
    workers: int = 0  # Ray Train workers (0: train in the trial's process)
    use_gpu: bool = False  # Ray Train workers on GPUs


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
def read_set(path: str, image_root: str, limit: int | None, seed: int,
             labels: Sequence[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """(image paths, labels, label set) of a LLaVA-format classification JSON. A record's
    label is its ``label`` (else its answer); the label set is `labels`, else a record's
    ``labels``, else the sorted labels seen (train and test must share one order: pass
    the test set's)."""
    from ..config import ConfigError, DataSource
    from ..data.instruct import read_instructions
    from ..eval.suites.common import select_subset
    from ..eval.suites.vl import gt_answer

    recs = list(read_instructions(DataSource(path=path, image_root=image_root)))
    ys = [str(r.get("label") or gt_answer(r)).strip() for r in recs]
    if labels is None:
        labels = next((list(map(str, r["labels"])) for r in recs if r.get("labels")), sorted(set(ys)))
    unknown = sorted(set(ys) - set(labels))
    if unknown:
        raise ConfigError(f"{path}: labels {unknown[:5]} are not in the label set {list(labels)[:10]}")
    keep = select_subset(list(range(len(recs))), limit, seed)
    return [str(recs[i]["image"]) for i in keep], [ys[i] for i in keep], list(labels)


def image_tensor(paths: Sequence[str], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 (resized RGB; normalised per batch by `normalise`)."""
    from PIL import Image

    from ..data.images import load_image

    out = np.stack([np.asarray(load_image(p).resize((size, size), Image.BILINEAR))
                    for p in paths]) if paths else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.5) / 0.5


# ---------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------
def _meta(cfg: VisionStudyConfig, model: str, scale: float, params: dict) -> dict:
    return {"run_id": f"{STUDY}-{cfg.experiment}-{cfg.dataset}-s{cfg.seed}", "study": STUDY,
            "model": model, "scale": float(scale),
            "method": {"resnet": "pretrain_finetune", "clip": "clip_ce_finetune"}[cfg.experiment],
            "method_params": json.dumps(params, sort_keys=True, default=str),
            "seed": int(cfg.seed)}


def _row(meta: dict, index: int, trained: str, eval_task: str, eval_index: int, dataset: str,
         metric: str, value: float, n: int, prompt: str = "", decoding: str = "{}") -> dict:
    return dict(meta, trained_task_index=int(index), trained_task=trained, eval_task=eval_task,
                eval_task_index=int(eval_index), dataset=dataset, split=SPLIT, metric=metric,
                value=float(value), n=int(n), time=time.time(),
                checkpoint_id=f"{meta['run_id']}/epoch{index}", eval_set_hash="",
                prompt_version=prompt, decoding=decoding)


# ---------------------------------------------------------------------------------------
# §3.1 ResNet
# ---------------------------------------------------------------------------------------
def build_resnet(spec: ResNetSpec, num_labels: int):
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(num_channels=3, layer_type="basic", depths=list(spec.depths),
                       hidden_sizes=list(spec.hidden_sizes), embedding_size=spec.embedding_size,
                       num_labels=num_labels)
    return ResNetForImageClassification(cfg)


@torch.no_grad()
def class_accuracy(model, x: torch.Tensor, y: torch.Tensor, classes: Sequence[int],
                   batch: int = 256) -> tuple[float, int]:
    """Accuracy (argmax over all classes) on the samples whose label is in `classes`."""
    keep = torch.isin(y, torch.tensor(list(classes), dtype=y.dtype))
    x, y = x[keep], y[keep]
    if len(y) == 0:
        return math.nan, 0
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, len(y), batch):
        logits = model(pixel_values=normalise(x[i:i + batch])).logits
        hits += int((logits.argmax(-1) == y[i:i + batch]).sum())
    model.train(was)
    return hits / len(y), len(y)


def _loader(x, y, idx, batch, seed, distributed):
    ds = torch.utils.data.TensorDataset(x[idx], y[idx])
    g = torch.Generator().manual_seed(seed)
    # a last batch of one sample would break BatchNorm in training mode: drop a ragged tail
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, generator=g,
                                     drop_last=len(idx) > batch)
    if distributed:
        import ray.train.torch

        dl = ray.train.torch.prepare_data_loader(dl, move_to_device=True)
    return dl


def run_resnet(cfg: VisionStudyConfig, *, distributed: bool = False, rank: int = 0,
               progress: bool = False) -> list[dict]:
    """§3.1 on `cfg.dataset` (see the module doc); returns (rank 0: and appends) the rows."""
    from ..results import ResultStore

    torch.manual_seed(cfg.seed)
    vs = next(s for s in cfg.sets if s.name == cfg.dataset)
    te_paths, te_labels, labels = read_set(vs.test, vs.image_root, cfg.max_test, cfg.seed)
    tr_paths, tr_labels, _ = read_set(vs.train, vs.image_root, cfg.max_train, cfg.seed, labels)
    index = {lab: i for i, lab in enumerate(labels)}
    xtr, ytr = image_tensor(tr_paths, cfg.image_size), torch.tensor([index[v] for v in tr_labels])
    xte, yte = image_tensor(te_paths, cfg.image_size), torch.tensor([index[v] for v in te_labels])
    half = len(labels) // 2
    pre, fin = list(range(half)), list(range(half, len(labels)))
    model = build_resnet(cfg.resnet, len(labels))
    scale = sum(p.numel() for p in model.parameters())
    params = {"pretrain_classes": [labels[i] for i in pre], "finetune_classes": [labels[i] for i in fin],
              "pretrain_epochs": cfg.pretrain_epochs, "finetune_epochs": cfg.finetune_epochs,
              "lr": cfg.lr, "batch_size": cfg.batch_size, "optimizer": "adamw+cosine per phase",
              "image_size": cfg.image_size, "resnet": asdict(cfg.resnet)}
    meta = _meta(cfg, cfg.resnet.name, scale, params)
    net = model
    if distributed:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
        net = model.module if hasattr(model, "module") else model
    store = ResultStore(cfg.results) if rank == 0 else None
    rows: list[dict] = []
    epoch = 0
    for phase, classes, n_epochs in (("pretrain", pre, cfg.pretrain_epochs),
                                     ("finetune", fin, cfg.finetune_epochs)):
        idx = torch.isin(ytr, torch.tensor(classes)).nonzero().flatten()
        dl = _loader(xtr, ytr, idx, cfg.batch_size, cfg.seed + epoch, distributed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=5e-4)
        steps = max(1, n_epochs * len(dl))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(n_epochs):
            epoch += 1
            model.train()
            if distributed and hasattr(dl, "sampler") and hasattr(dl.sampler, "set_epoch"):
                dl.sampler.set_epoch(epoch)
            for xb, yb in dl:
                loss = F.cross_entropy(model(pixel_values=normalise(xb)).logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if rank != 0:
                continue
            new = []
            for ev, cls in (("pretrained_classes", pre), ("finetuned_classes", fin)):
                for metric, x, y in (("train_accuracy", xtr, ytr), ("test_accuracy", xte, yte)):
                    acc, n = class_accuracy(net, x, y, cls)
                    new.append(_row(meta, epoch, phase, ev, 1 if ev.startswith("pre") else 2,
                                    cfg.dataset, metric, acc, n))
            store.append(new)
            rows.extend(new)
            if progress:
                print(f"[{STUDY} resnet {cfg.dataset} s{cfg.seed}] epoch {epoch} ({phase}): "
                      + ", ".join(f"{r['eval_task']}/{r['metric']}={r['value']:.3f}" for r in new))
    return rows


# ---------------------------------------------------------------------------------------
# §3.2 CLIP
# ---------------------------------------------------------------------------------------
def _clip_pixels(proc, paths: Sequence[str]) -> torch.Tensor:
    from ..data.images import pixel_values

    if not paths:
        return torch.zeros(0)
    return torch.cat([pixel_values(proc, list(paths[i:i + 256])) for i in range(0, len(paths), 256)])


@torch.no_grad()
def _text_embeddings(model, tok, dataset: str, labels: Sequence[str]) -> torch.Tensor:
    from ..eval.clip_zero_shot import text_batch

    tcfg = model.config.text_config
    eos = getattr(tcfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(tok, "eos_token_id", None)
    ids, mask = text_batch(tok, [describe(dataset, lab) for lab in labels],
                           int(getattr(tcfg, "max_position_embeddings", 77)), eos,
                           getattr(tok, "pad_token_id", None))
    dev = next(model.parameters()).device
    out = model.get_text_features(input_ids=ids.to(dev), attention_mask=mask.to(dev))
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    return F.normalize(out.float(), dim=-1)


def _image_embeddings(vision, projection, pix: torch.Tensor) -> torch.Tensor:
    out = vision(pixel_values=pix).pooler_output
    return F.normalize(projection(out).float(), dim=-1)


@torch.no_grad()
def zero_shot(vision, projection, pix, y, txt, batch: int = 256) -> float:
    if len(y) == 0:
        return math.nan
    was = vision.training
    vision.eval()
    hits = 0
    for i in range(0, len(y), batch):
        img = _image_embeddings(vision, projection, pix[i:i + batch])
        hits += int(((img @ txt.T).argmax(-1) == y[i:i + batch]).sum())
    vision.train(was)
    return hits / len(y)


def run_clip(cfg: VisionStudyConfig, *, distributed: bool = False, rank: int = 0,
             progress: bool = False) -> list[dict]:
    """§3.2 with `cfg.dataset` in-domain (see the module doc); rank 0 appends the rows."""
    from ..eval.clip_zero_shot import load_clip
    from ..results import ResultStore

    torch.manual_seed(cfg.seed)
    model, tok, proc = load_clip(cfg.clip)
    model.requires_grad_(False)
    vision, projection = model.vision_model, model.visual_projection
    vision.requires_grad_(True)
    data = {}
    for s in cfg.sets:
        te_paths, te_labels, labels = read_set(s.test, s.image_root, cfg.max_test, cfg.seed)
        ix = {lab: i for i, lab in enumerate(labels)}
        data[s.name] = (_clip_pixels(proc, te_paths), torch.tensor([ix[v] for v in te_labels]),
                        _text_embeddings(model, tok, s.name, labels))
    vs = next(s for s in cfg.sets if s.name == cfg.dataset)
    labels = read_set(vs.test, vs.image_root, 0, cfg.seed)[2]
    tr_paths, tr_labels, _ = read_set(vs.train, vs.image_root, cfg.max_train, cfg.seed, labels)
    ix = {lab: i for i, lab in enumerate(labels)}
    xtr, ytr = _clip_pixels(proc, tr_paths), torch.tensor([ix[v] for v in tr_labels])
    txt = data[cfg.dataset][2]
    logit_scale = float(model.logit_scale.exp())
    params = {"clip": cfg.clip, "epochs": cfg.finetune_epochs, "lr": cfg.clip_lr,
              "batch_size": cfg.batch_size, "text": DESCRIPTION_FORMAT,
              "descriptions": {s.name: DESCRIPTIONS.get(s.name, "an image") for s in cfg.sets},
              "trained": "vision encoder (text tower and projections frozen)",
              "logit_scale": logit_scale}
    meta = _meta(cfg, str(cfg.clip), sum(p.numel() for p in vision.parameters()), params)
    train_vision = vision
    if distributed:
        import ray.train.torch

        train_vision = ray.train.torch.prepare_model(vision)
    store = ResultStore(cfg.results) if rank == 0 else None
    rows: list[dict] = []

    def evaluate(epoch: int) -> None:
        new = []
        for name, (pix, y, t) in data.items():
            acc = zero_shot(vision, projection, pix, y, t)
            dom = "in_domain" if name == cfg.dataset else "out_of_domain"
            new.append(_row(meta, epoch + 1, f"epoch-{epoch}", dom, 1 if dom == "in_domain" else 2,
                            name, "clip_zero_shot", acc, len(y),
                            prompt=f"emt-vision-v1:{DESCRIPTION_FORMAT}"))
        store.append(new)
        rows.extend(new)
        if progress:
            print(f"[{STUDY} clip {cfg.dataset} s{cfg.seed}] epoch {epoch}: "
                  + ", ".join(f"{r['dataset']}={r['value']:.3f}" for r in new))

    if rank == 0:
        evaluate(0)
    dl = _loader(xtr, ytr, torch.arange(len(ytr)), cfg.batch_size, cfg.seed, distributed)
    opt = torch.optim.AdamW([p for p in train_vision.parameters() if p.requires_grad],
                            lr=cfg.clip_lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.finetune_epochs * len(dl)))
    for epoch in range(1, cfg.finetune_epochs + 1):
        train_vision.train()
        if distributed and hasattr(dl, "sampler") and hasattr(dl.sampler, "set_epoch"):
            dl.sampler.set_epoch(epoch)
        for xb, yb in dl:
            img = F.normalize(projection(train_vision(pixel_values=xb).pooler_output).float(), dim=-1)
            loss = F.cross_entropy(logit_scale * img @ txt.to(img.device).T, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if rank == 0:
            evaluate(epoch)
    return rows


RUNNERS = {"resnet": run_resnet, "clip": run_clip}


# ---------------------------------------------------------------------------------------
# Ray: one Tune trial per (experiment, dataset, seed); Ray Train inside when workers >= 1
# ---------------------------------------------------------------------------------------
def _train_loop(config: dict) -> None:
    """Ray Train worker loop."""
    import ray.train

    cfg = config["cfg"]
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    rank = ray.train.get_context().get_world_rank()
    RUNNERS[cfg.experiment](cfg, distributed=True, rank=rank, progress=config.get("progress", False))


def run_trial(cfg: VisionStudyConfig, progress: bool = False) -> int:
    """One trial: in-process (workers 0) or a TorchTrainer with `cfg.workers` workers.
    Returns the number of rows written (rank 0)."""
    if cfg.workers <= 0:
        return len(RUNNERS[cfg.experiment](cfg, progress=progress))
    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        _train_loop, train_loop_config={"cfg": cfg, "progress": progress},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=None if cfg.use_gpu else {"CPU": 0.5}),
        run_config=RunConfig(name=f"{STUDY}-{cfg.experiment}-{cfg.dataset}-s{cfg.seed}",
                             storage_path=str(Path(cfg.results).parent / "ray_train")
                             if cfg.results else tempfile.mkdtemp()))
    trainer.fit()
    from ..results import ResultStore

    df = ResultStore(cfg.results).read()
    return int((df.run_id == f"{STUDY}-{cfg.experiment}-{cfg.dataset}-s{cfg.seed}").sum()) \
        if len(df) else 0


def _tune_trainable(config: dict) -> dict:
    import torch as _t

    _t.set_num_threads(max(1, int(config.get("threads", 1))))
    n = run_trial(config["cfg"], progress=config.get("progress", False))
    return {"rows": n}


def run_study(cfgs: Sequence[VisionStudyConfig], *, use_tune: bool = True,
              max_concurrent: int = 2, threads: int = 1, progress: bool = False,
              storage: str | None = None) -> list[dict]:
    """Run every trial (Ray Tune, one trial per config, or sequentially without Tune)."""
    cfgs = list(cfgs)
    if not use_tune:
        torch.set_num_threads(max(1, threads))
        return [{"trial": f"{c.experiment}-{c.dataset}-s{c.seed}",
                 "rows": run_trial(c, progress=progress)} for c in cfgs]
    import ray
    from ray import tune

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=progress)
    trainable = tune.with_resources(_tune_trainable, {"cpu": 0.01} if any(c.workers for c in cfgs)
                                    else {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space={"cfg": tune.grid_search(cfgs), "threads": threads, "progress": progress},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=STUDY, storage_path=storage,
                                  verbose=1 if progress else 0))
    grid = tuner.fit()
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} {STUDY} trial(s) failed; first: {errors[0]}")
    return [dict(r.metrics or {}) for r in grid]
