"""Does each of the paper's four training extensions help? A small ablation.

Trains the supervised two-stage network with all four extensions on, with each one switched
off in turn, and with all four off, over several seeds, and prints AP / AUROC (mean and
spread over seeds) on the test split. The data is the built-in synthetic set (generated into
--data-root; no download) or one KolektorSDD fold. Results are appended as JSON lines to
--results for docs/benchmarks.md.

    python benchmarks/ablation.py --out runs/ablation --seeds 0,1,2
    python benchmarks/ablation.py --dataset ksdd --data-root /path/to/KolektorSDD --split 33_5 \\
        --fold 0 --epochs 30 --out runs/ablation-ksdd --seeds 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import append_result, provenance

EXTENSIONS = ("dynamic_balancing", "gradient_adjustment", "weighted_segmentation", "frequency_sampling")
VARIANTS = {"all on": {}} | {f"no {e.replace('_', ' ')}": {e: False} for e in EXTENSIONS} | {"all off": {e: False for e in EXTENSIONS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("synthetic", "ksdd"), default="synthetic")
    parser.add_argument("--data-root", default=None, help="KolektorSDD folder, or where to generate the synthetic set")
    parser.add_argument("--split", default="33_33", help="KolektorSDD split")
    parser.add_argument("--fold", type=int, default=0, help="KolektorSDD fold")
    parser.add_argument("--train-good", type=int, default=100, help="synthetic training images without a defect")
    parser.add_argument("--train-defective", type=int, default=100, help="synthetic training images with a defect")
    parser.add_argument("--test", type=int, default=60, help="synthetic test images of each class")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--input-size", default=None, help="WxH (default: 128x128 synthetic, 256x704 KSDD)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any other training config field (YAML value)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import numpy as np
    import yaml

    from defectkit.data.synthetic import generate
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.segdec import paper_config
    from defectkit.methods.trainer import fit

    out = Path(args.out)
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.dataset == "synthetic":
        size = tuple(int(v) for v in (args.input_size or "128x128").split("x"))
        root = Path(args.data_root or out / "data")
        generate(root, n_train_good=args.train_good, n_train_defective=args.train_defective, n_test_good=args.test, n_test_defective=args.test, size=size)
        base = dict(name="demo", data_root=str(root), input_size=size)
    else:
        if not args.data_root:
            parser.error("--dataset ksdd needs --data-root")
        size = tuple(int(v) for v in (args.input_size or "256x704").split("x"))
        base = dict(name="ksdd", data_root=args.data_root, split=args.split, fold=args.fold, input_size=size)
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    rows = []
    for variant in variants:
        scores, minutes = [], []
        for seed in seeds:
            config = paper_config(**base, preset=args.preset, epochs=args.epochs, seed=seed, **extra, **VARIANTS[variant])
            run = out / variant.replace(" ", "_") / f"seed{seed}"
            started = time.perf_counter()
            fit(config, run, resume=(run / "checkpoint.safetensors").is_file(), log=lambda m: print(m, file=sys.stderr))
            minutes.append((time.perf_counter() - started) / 60)
            metrics = evaluate_run(run)
            scores.append((metrics["ap"], metrics["auroc"], metrics["fp"] + metrics["fn"]))
            print(f"{variant} seed {seed}: AP {metrics['ap']:.4f} AUROC {metrics['auroc']:.4f} FP+FN {metrics['fp'] + metrics['fn']}", flush=True)
        ap, auroc, errors = (np.array(v, dtype=float) for v in zip(*scores))
        rows.append({"variant": variant, "ap": ap.tolist(), "auroc": auroc.tolist(), "errors": errors.tolist(), "minutes": [round(m, 2) for m in minutes]})

    print()
    print("| variant | AP mean | AP std | AUROC mean | FP+FN mean | runs |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ap = np.array(row["ap"])
        print(f"| {row['variant']} | {ap.mean():.4f} | {ap.std():.4f} | {np.mean(row['auroc']):.4f} | {np.mean(row['errors']):.1f} | {len(ap)} |")
    append_result(args.results, {"benchmark": "ablation", **provenance(), "dataset": args.dataset, "seeds": seeds, "variants": rows})


if __name__ == "__main__":
    main()
