"""EMT §3: supervised fine-tuning of a vision encoder forgets (Zhai et al. Fig. 2, Fig. 3).

    python studies/emt_vision.py                          # micro: digits, shapes; 2 seeds
    python studies/emt_vision.py --experiments resnet --seeds 0
    ray job submit --working-dir . -- python studies/emt_vision.py --preset paper \\
        --data-root /data --workers 1                      # MNIST, CIFAR-10/100, miniImageNet

Experiments (mllmcl_ray/emt/vision.py; one Ray Tune trial per (experiment, set, seed),
training under Ray Train with --workers >= 1, rows in OUT/results, report
OUT/emt_vision-report.html):

- ``resnet`` (§3.1, Fig. 2): ResNet-18 (transformers ResNetForImageClassification from
  ResNetConfig; micro: a smaller ResNet of the same layout) trained on the first 50 % of
  the classes, then fine-tuned on the other 50 %; the pretrained classes' accuracy per
  epoch (paper: 100 + 100 epochs; micro: --pretrain-epochs / --finetune-epochs).
- ``clip`` (§3.2, Fig. 3 / Table 10): the CLIP vision encoder (paper: OpenAI ViT-L/14;
  micro: the micro CLIP) fine-tuned with cross-entropy against the frozen text
  embeddings of "label, short description" prompts; in-domain and out-of-domain
  zero-shot accuracy per epoch (paper: 15 epochs; --clip-epochs).

Data: paper ``<data_root>/emt/<set>/{train,test}.json`` (LLaVA JSON with ``label`` and
``labels``, images under ``<data_root>/images``); micro: the micro world's digits/shapes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mllmcl_ray.emt.vision import (EXPERIMENTS, STUDY, ResNetSpec, VisionSet,
                                   VisionStudyConfig, run_study)

PAPER_SETS = ("mnist", "cifar10", "cifar100", "miniimagenet")
MICRO_SETS = ("digits", "shapes")
PAPER_IMAGE_SIZE = {"miniimagenet": 84}  # others 32 (MNIST 28 is padded up by resizing)
MICRO_RESNET = ResNetSpec(name="resnet-micro", depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                          embedding_size=16)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["micro", "paper"], default=None,
                    help="micro (default without a GPU) or paper")
    ap.add_argument("--experiments", default="resnet,clip", help="comma-separated among resnet, clip")
    ap.add_argument("--sets", default=None, help="classification sets (paper default "
                    f"{','.join(PAPER_SETS)}; micro {','.join(MICRO_SETS)})")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    ap.add_argument("--pretrain-epochs", type=int, default=None, help="§3.1 pretraining epochs (paper 100, micro 6)")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="§3.1 fine-tuning epochs (paper 100, micro 6)")
    ap.add_argument("--clip-epochs", type=int, default=None, help="§3.2 fine-tuning epochs (paper 15, micro 6)")
    ap.add_argument("--clip", default=None, help="§3.2 CLIP checkpoint (paper openai/clip-vit-large-patch14; "
                    "micro: the micro CLIP)")
    ap.add_argument("--lr", type=float, default=None, help="§3.1 AdamW lr (default 1e-3 paper, 3e-3 micro)")
    ap.add_argument("--clip-lr", type=float, default=None, help="§3.2 AdamW lr (default 1e-5 paper, 1e-4 micro)")
    ap.add_argument("--batch-size", type=int, default=None, help="per worker (paper 128, micro 64)")
    ap.add_argument("--max-train", type=int, default=None, help="training images per set (paper all, micro 600)")
    ap.add_argument("--max-test", type=int, default=None, help="test images per set (paper all, micro 250)")
    ap.add_argument("--workers", type=int, default=0, help="Ray Train workers per trial (0: in the trial)")
    ap.add_argument("--gpu", action="store_true", help="Ray Train workers on GPUs")
    ap.add_argument("--no-tune", action="store_true", help="run the trials sequentially, without Ray Tune")
    ap.add_argument("--max-concurrent", type=int, default=2, help="trials at a time (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")
    ap.add_argument("--data-root", default=None, help="paper preset: data root (docs/data.md)")
    ap.add_argument("--world-size", default="micro", help="micro preset: world size (micro or tiny)")
    ap.add_argument("--out", default="runs/emt_vision", help="output directory")
    ap.add_argument("--dry-run", action="store_true", help="print the trials and stop")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return ap.parse_args(argv)


def build_configs(args) -> list[VisionStudyConfig]:
    from mllmcl_ray.config import ConfigError

    preset = args.preset
    if preset is None:
        from mllmcl_ray.study import default_preset

        preset = default_preset()
    exps = [e for e in args.experiments.split(",") if e]
    if not exps or any(e not in EXPERIMENTS for e in exps):
        raise ConfigError(f"--experiments {args.experiments!r}: choose among {', '.join(EXPERIMENTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    results = str(Path(args.out) / "results")
    micro = preset == "micro"
    if micro:
        import json

        from mllmcl_ray.data.micro.world import generate_world

        world = Path(args.out) / f"world-{args.world_size}-s0"  # prepare_micro's world
        generate_world(world, seed=0, size=args.world_size)
        manifest = json.loads((world / "manifest.json").read_text())
        names = (args.sets or ",".join(MICRO_SETS)).split(",")
        sets = []
        for n in names:
            t = manifest["vl"].get(n)
            if t is None or t.get("eval") != "classification":
                raise ConfigError(f"micro world has no classification set {n!r}")
            sets.append(VisionSet(n, str(world / t["train"]), str(world / t["test"]),
                                  str(world / manifest["images_dir"])))
        clip = args.clip
        if "clip" in exps and not clip:  # the micro CLIP (pretrained once, cached)
            from mllmcl_ray.study import prepare_micro

            prep = prepare_micro(Path(args.out), sizes=[], world_size=args.world_size,
                                 progress=not args.quiet,
                                 log=(lambda *_: None) if args.quiet else print)
            clip = str(next(Path(prep.world_dir.parent, "bases").glob(
                f"clip-{'nano' if args.world_size == 'tiny' else 'micro'}-*")))
    else:
        if not args.data_root:
            raise ConfigError("--preset paper needs --data-root (layout: docs/data.md)")
        root = Path(args.data_root)
        names = (args.sets or ",".join(PAPER_SETS)).split(",")
        sets = [VisionSet(n, str(root / "emt" / n / "train.json"), str(root / "emt" / n / "test.json"),
                          str(root / "images")) for n in names]
        clip = args.clip or "openai/clip-vit-large-patch14"
    common = dict(sets=sets, results=results, clip=clip,
                  resnet=MICRO_RESNET if micro else ResNetSpec(),
                  pretrain_epochs=args.pretrain_epochs or (6 if micro else 100),
                  lr=args.lr or (3e-3 if micro else 1e-3),
                  clip_lr=args.clip_lr or (1e-4 if micro else 1e-5),
                  batch_size=args.batch_size or (64 if micro else 128),
                  max_train=args.max_train if args.max_train is not None else (600 if micro else None),
                  max_test=args.max_test if args.max_test is not None else (250 if micro else None),
                  workers=args.workers, use_gpu=args.gpu)
    cfgs = []
    for e in exps:
        ft = (args.finetune_epochs or (6 if micro else 100)) if e == "resnet" else \
            (args.clip_epochs or (6 if micro else 15))
        for n in names:
            for s in seeds:
                cfgs.append(VisionStudyConfig(
                    experiment=e, dataset=n, seed=s, finetune_epochs=ft,
                    image_size=32 if micro else PAPER_IMAGE_SIZE.get(n, 32), **common))
    return cfgs


def main(argv=None) -> int:
    from mllmcl_ray.config import ConfigError

    args = parse_args(argv)
    try:
        cfgs = build_configs(args)
    except ConfigError as e:
        print(f"{STUDY}: {e}", file=sys.stderr)
        return 2
    for c in cfgs:
        print(f"[{STUDY}] trial {c.experiment} on {c.dataset} seed {c.seed}: "
              + (f"{c.pretrain_epochs}+{c.finetune_epochs} epochs, {c.resnet.name}" if c.experiment == "resnet"
                 else f"{c.finetune_epochs} epochs of {c.clip}"))
    if args.dry_run:
        missing = sorted({p for c in cfgs for s in c.sets for p in (s.train, s.test) if not Path(p).exists()})
        for m in missing:
            print(f"    MISSING {m}")
        return 1 if missing else 0
    run_study(cfgs, use_tune=not args.no_tune, max_concurrent=args.max_concurrent,
              threads=args.threads, progress=not args.quiet,
              storage=str(Path(args.out).resolve() / "tune"))
    from mllmcl_ray.report import build_report

    out = build_report(Path(args.out) / "results", Path(args.out) / f"{STUDY}-report.html",
                       title=f"mllmcl-ray: {STUDY}")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
