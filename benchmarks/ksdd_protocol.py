"""KolektorSDD 3-fold protocol for the supervised two-stage network on this machine.

Trains one run per fold of an official split, evaluates each on its test fold and prints the
paper's table: AP and AUROC per fold and averaged, FP and FN summed. Results (with machine,
date and command) are appended as JSON lines to --results for docs/benchmarks.md.

    python benchmarks/ksdd_protocol.py --data-root /path/to/KolektorSDD --split 33_33 \
        --preset small --input-size 256x704 --epochs 50 --out runs/ksdd-33_33
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import append_result, provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="33_33")
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--input-size", default="256x704")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any other training config field (YAML value)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import yaml

    from defectkit.evaluate.metrics import combine_folds
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.segdec import paper_config
    from defectkit.methods.trainer import fit
    from defectkit.runs import read_csv

    width, height = (int(v) for v in args.input_size.split("x"))
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    per_fold, seconds = [], []
    for fold in (int(f) for f in args.folds.split(",")):
        config = paper_config(
            "ksdd", data_root=args.data_root, split=args.split, fold=fold, preset=args.preset, input_size=(width, height),
            epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, device=args.device, **extra,
        )
        out = Path(args.out) / f"fold{fold}"
        fit(config, out, resume=(out / "checkpoint.safetensors").is_file(), log=lambda m: print(m, file=sys.stderr))
        # from the run's own log, so a resumed or finished run reports its whole training time
        train_s = sum(float(row["seconds"]) for row in read_csv(out / "train_log.csv"))
        metrics = evaluate_run(out, device=args.device)
        seconds.append(train_s)
        per_fold.append(metrics)
        print(f"fold {fold}: AP {metrics['ap']:.4f} AUROC {metrics['auroc']:.4f} FP {metrics['fp']} FN {metrics['fn']} "
              f"FP@FN=0 {metrics['fp_at_fn0']} ({train_s / 60:.1f} min training)", flush=True)
    total = combine_folds(per_fold)
    print()
    print("| fold | AP | AUROC | FP | FN | FP at FN=0 | train min |")
    print("|---|---|---|---|---|---|---|")
    for metrics, fold, s in zip(per_fold, args.folds.split(","), seconds):
        print(f"| {fold} | {metrics['ap']:.4f} | {metrics['auroc']:.4f} | {metrics['fp']} | {metrics['fn']} | {metrics['fp_at_fn0']} | {s / 60:.1f} |")
    print(f"| mean / sum | {total['ap']:.4f} | {total['auroc']:.4f} | {total['fp']} | {total['fn']} | {total['fp_at_fn0']} | {sum(seconds) / 60:.1f} |")
    record = {
        "benchmark": "ksdd_protocol", **provenance(), "ap_mean": total["ap"], "auroc_mean": total["auroc"],
        "fp_sum": total["fp"], "fn_sum": total["fn"], "fp_at_fn0_sum": total["fp_at_fn0"], "train_minutes": [round(s / 60, 2) for s in seconds],
        "folds": [{k: m[k] for k in ("ap", "auroc", "fp", "fn", "fp_at_fn0", "n_images", "n_defective")} for m in per_fold],
    }
    append_result(args.results, record)


if __name__ == "__main__":
    main()
