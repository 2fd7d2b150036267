"""EAR vs RIAD on KolektorSDD trained on good images only, with the EAR ablation.

For every fold of an official split it trains (or resumes, or reuses when finished) one run
per variant into ``OUT/<variant>-fold<k>``, evaluates it on the fold's test images and times
inference, then prints one table:

* ``ear``: EAR as configured (attention mask, inference skips off-off-on-on);
* ``riad``: RIAD (12 masked passes per image at test);
* with ``--ablation``: ``ear-random`` (trained like ``ear`` but with a random mask of the same
  area, ``mask_rule=random``) and the ``ear`` run scored with other skips on (``ear, all
  skips``, ``skips 0001``, ``skips 0111``; no training; ``--skip-variants`` for these alone);
* EAR's other free parameters, each its own run: ``ear-mosaic`` (mosaic fill),
  ``ear-share20`` / ``ear-share05`` (20% / 5% excised), ``ear-backbone`` (the ImageNet
  backbone's attention); and ``patchcore`` (``fast`` preset at ``--patchcore-size``).

The table's last column says whether training converged: the relative fall of the mean loss
from the second-to-last fifth of the epochs to the last one (flat: near 0).

Images per second are for scoring already-decoded, resized images (the method's own work,
no file reading) in batches of ``--batch``, after one warm-up batch, with the torch threads
the process has. Train runs can go in separate processes (``--variants ear`` and
``--variants riad`` at OMP_NUM_THREADS=1 each); run the script once more with every variant
when they are done to time them alone on the machine and print the joint table.

    python benchmarks/unsupervised_ksdd.py --data-root /path/to/KolektorSDD --folds 0 \\
        --input-size 128x320 --epochs 16 --ablation --out runs/bench-unsup
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import append_result, provenance

ABLATION = {"ear-random": ("ear", {"mask_rule": "random"})}
# EAR's free parameters, each trained as its own run; PatchCore on the offline backbone
SWEEP = {
    "ear-mosaic": ("ear", {"fill": "mosaic"}),
    "ear-share20": ("ear", {"mask_share": 0.2}),
    "ear-share05": ("ear", {"mask_share": 0.05}),
    "ear-backbone": ("ear", {"attention": "backbone"}),
    "patchcore": ("patchcore", {"preset": "fast"}),
}
VARIANTS = {"ear": ("ear", {}), "riad": ("riad", {}), **ABLATION, **SWEEP}
# inference-only variants of the ``ear`` run: which U-Net skips stay on, shallow to deep
SKIP_SETTINGS = {"ear, all skips": (True, True, True, True), "ear, skips 0001": (False, False, False, True),
                 "ear, skips 0111": (False, True, True, True)}


def train(variant: str, fold: int, args, extra: dict) -> Path:
    from defectkit.methods.registry import get_method
    from defectkit.methods.trainer import fit, resume_config

    method_name, settings = VARIANTS[variant]
    method = get_method(method_name)
    width, height = (int(v) for v in args.input_size.split("x"))
    out = Path(args.out) / f"{variant}-fold{fold}"
    if (out / "checkpoint.safetensors").is_file():
        fit(resume_config(out), out, resume=True, log=lambda m: print(m, file=sys.stderr))
        return out
    values = dict(dataset="ksdd", data_root=args.data_root, split=args.split, fold=fold, preset=args.preset,
                  input_size=(width, height), epochs=args.epochs, device=args.device, **extra)
    if method_name == "patchcore":  # one pass; its own input size (a stride-8 grid of pretrained features)
        values.update(epochs=1, input_size=tuple(int(v) for v in args.patchcore_size.split("x")))
        values = {k: v for k, v in values.items() if k in method.Config.model_fields}
    config = method.Config(**{**values, **settings})
    fit(config, out, log=lambda m: print(m, file=sys.stderr))
    return out


def images_per_second(scorer, samples, batch: int) -> float:
    import numpy as np

    pre = scorer.config.preprocessing()
    images = np.stack([pre.image(s) for s in samples])
    scorer.score_batch(images[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        scorer.score_batch(images[i : i + batch])
    return len(images) / (time.perf_counter() - started)


def flatness(losses: list[float]) -> float:
    """Relative change of the mean loss from the second-to-last fifth of the epochs to the last
    (0: flat); NaN with fewer than 10 epochs."""
    k = len(losses) // 5
    if k < 2:
        return float("nan")
    before, last = sum(losses[-2 * k : -k]) / k, sum(losses[-k:]) / k
    return (before - last) / before


def measure(run: Path, args, skips: tuple[bool, ...] | None = None) -> dict:
    """Test metrics (image AUROC, AP; pixel AUROC, AUPRO) and scoring speed of a finished run."""
    from defectkit import runs
    from defectkit.evaluate import metrics as M
    from defectkit.evaluate.run_eval import evaluate_run, read_test_split, score_samples
    from defectkit.methods.registry import load_method

    scorer = load_method(run, device=args.device)
    _, test = read_test_split(scorer.config)
    if skips is not None:  # the same weights with other skip connections on at inference
        scorer.model.skips = skips
        labels, raw, pixels = score_samples(scorer, test)
        result = {**M.image_metrics(labels, raw), **pixels}
    else:
        result = evaluate_run(run, device=args.device)
    result["images_per_s"] = images_per_second(scorer, test, args.batch)
    log = runs.read_csv(run / runs.TRAIN_LOG)
    result["train_min"] = sum(float(r["seconds"]) for r in log) / 60
    losses = [float(r["loss"]) for r in log if r.get("loss") not in (None, "")]
    result["final_loss"] = losses[-1] if losses else float("nan")
    result["flatness"] = flatness(losses)
    result["epochs"] = len(log)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="33_33")
    parser.add_argument("--folds", default="0")
    parser.add_argument("--variants", default="ear,riad", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--ablation", action="store_true", help="add ear-random and EAR scored with other skips on")
    parser.add_argument("--skip-variants", action="store_true", help="score the ear run with other skips on too (no training; implied by --ablation)")
    parser.add_argument("--patchcore-size", default="256x704", help="PatchCore's input size, WIDTHxHEIGHT")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--input-size", default="128x320", help="WIDTHxHEIGHT")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="images per scoring batch when timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any other training option (YAML value)")
    parser.add_argument("--train-only", action="store_true", help="train, then stop (time and evaluate in a later call)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    variants = args.variants.split(",") + (list(ABLATION) if args.ablation else [])
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    rows = []
    for fold in (int(f) for f in args.folds.split(",")):
        for variant in dict.fromkeys(variants):
            run = train(variant, fold, args, extra)
            if args.train_only:
                continue
            rows.append((variant, fold, measure(run, args)))
            if variant == "ear" and (args.ablation or args.skip_variants):
                rows.extend((name, fold, measure(run, args, skips)) for name, skips in SKIP_SETTINGS.items())
    if args.train_only:
        return

    print()
    print("| variant | fold | image AUROC | AP | pixel AUROC | AUPRO | images/s | epochs | train min | final loss | loss change, last fifth |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for variant, fold, r in rows:
        print(f"| {variant} | {fold} | {r['auroc']:.4f} | {r['ap']:.4f} | {r.get('pixel_auroc', float('nan')):.4f} | "
              f"{r.get('aupro', float('nan')):.4f} | {r['images_per_s']:.1f} | {r['epochs']} | {r['train_min']:.1f} | "
              f"{r['final_loss']:.4f} | {r['flatness']:+.1%} |")
    keys = ("auroc", "ap", "pixel_auroc", "aupro", "images_per_s", "epochs", "train_min", "final_loss", "flatness", "n_images", "n_defective")
    append_result(args.results, {
        "benchmark": "unsupervised_ksdd", **provenance(), "input_size": args.input_size, "preset": args.preset, "epochs": args.epochs,
        "rows": [{"variant": v, "fold": f, **{k: r[k] for k in keys if k in r}} for v, f, r in rows],
    })


if __name__ == "__main__":
    main()
