"""The GPU check: every GPU measurement the docs need, in one command of at most 8 minutes on
one H100/H200 (``bash benchmarks/gpu_check.sh``), ending in one table.

1. the CUDA tests (tests/methods/test_accel.py, tests/test_config.py; they skip without a GPU);
2. the throughput table (``throughput.py``): fp32 and bf16, the paper and small presets, the
   three paper input sizes, inference and training images/s, peak GPU memory;
3. two epochs of the paper-preset KolektorSDD protocol at full size (fold 0 of the 3-fold
   split), with the wall time projected to the paper's 50 epochs x 3 folds;
4. EAR, RIAD and PatchCore scoring images/s at their KolektorSDD benchmark sizes.

Each step runs on, and its row says failed, when another fails; the exit code is 1 if any
did. ``--dry-run`` runs the same steps on the CPU at tiny sizes on data it writes itself (a
dummy KolektorSDD in the official layout, synthetic images), so the script is known to run to
its end before a GPU is lent; a test runs it.

    bash benchmarks/gpu_check.sh --ksdd /data/KolektorSDD          # on the GPU machine
    bash benchmarks/gpu_check.sh --dry-run                          # anywhere, ~1 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from common import append_result, provenance

HERE = Path(__file__).resolve().parent
REAL = {"device": "cuda", "presets": ("paper", "small"), "sizes": ("dagm", "ksdd2", "ksdd"), "precisions": ("fp32", "bf16"),
        "batches": "1,8,32", "train_batch": 8, "min_seconds": 1.0, "ksdd_preset": "paper", "ksdd_size": (512, 1408), "ksdd_epochs": 2,
        "scoring": {"ear": ("small", (128, 320)), "riad": ("small", (128, 320)), "patchcore": ("fast", (256, 704))}, "scoring_images": 64}
DRY = {"device": "cpu", "presets": ("tiny",), "sizes": ("tiny",), "precisions": ("fp32",),
       "batches": "1,2", "train_batch": 2, "min_seconds": 0.05, "ksdd_preset": "tiny", "ksdd_size": (64, 128), "ksdd_epochs": 2,
       "scoring": {"ear": ("tiny", (32, 64)), "riad": ("tiny", (32, 64)), "patchcore": ("fast", (64, 64))}, "scoring_images": 4}
PAPER_EPOCHS, FOLDS = 50, 3


def cuda_tests(plan, work: Path) -> list[tuple[str, str]]:
    tests = [str(HERE.parent / "tests" / "methods" / "test_accel.py"), str(HERE.parent / "tests" / "test_config.py")]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests], capture_output=True, text=True, cwd=HERE.parent)
    summary = next((line for line in reversed(result.stdout.splitlines()) if " passed" in line or " failed" in line or " error" in line), "no summary")
    if result.returncode != 0:
        raise RuntimeError(f"pytest: {summary.strip('= ')}\n{result.stdout[-2000:]}")
    return [("pytest tests/methods/test_accel.py tests/test_config.py", summary.strip("= "))]


def throughput(plan, work: Path) -> list[tuple[str, str]]:
    rows = []
    for precision in plan["precisions"]:
        for preset in plan["presets"]:
            for size in plan["sizes"]:
                command = [sys.executable, str(HERE / "throughput.py"), "--one", preset, size, "--batches", plan["batches"], "--train-batch",
                           str(plan["train_batch"]), "--min-seconds", str(plan["min_seconds"]), "--device", plan["device"], "--precision", precision]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"throughput {preset} {size} {precision}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append((f"{preset} {size} {r['input']} {r['precision']}",
                             f"infer {r['infer_b1']:.1f}/s b1, {r['infer_best']:.1f}/s b{r['best_batch']}; train {r['train']:.1f}/s b{r['train_batch']}; peak {r['peak_mib']:.0f} MiB"))
    return rows


def dummy_ksdd(root: Path) -> Path:
    """kos01..kos50 with Part0..Part7 (Part3 defective), tiny images: the official layout and names."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for k in range(1, 51):
        for part in range(8):
            folder = root / f"kos{k:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            picture = rng.integers(60, 120, (128, 64), dtype=np.uint8)
            label = np.zeros((128, 64), np.uint8)
            if part == 3:
                picture[50:70, 20:40] = 255
                label[50:70, 20:40] = 255
            cv2.imwrite(str(folder / f"Part{part}.jpg"), picture)
            cv2.imwrite(str(folder / f"Part{part}_label.bmp"), label)
    return root


def ksdd_protocol(plan, work: Path, ksdd: Path | None) -> list[tuple[str, str]]:
    from defectkit import runs
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.segdec import paper_config
    from defectkit.methods.trainer import fit

    root = ksdd if ksdd is not None else dummy_ksdd(work / "ksdd-dummy")
    width, height = plan["ksdd_size"]
    config = paper_config("ksdd", data_root=str(root), split="33_33", fold=0, preset=plan["ksdd_preset"], input_size=(width, height),
                          epochs=plan["ksdd_epochs"], device=plan["device"])
    run = work / "ksdd-fold0"
    fit(config, run, log=lambda m: None)
    started = time.perf_counter()
    metrics = evaluate_run(run, device=plan["device"], log=lambda m: None)
    eval_s = time.perf_counter() - started
    epochs = [float(r["seconds"]) for r in runs.read_csv(run / runs.TRAIN_LOG)]
    per_epoch = epochs[-1]  # the second epoch: CUDA's warm-up and the first reads are in the first
    projected = FOLDS * (PAPER_EPOCHS * per_epoch + eval_s)
    data = "dummy KSDD (the official layout, tiny images)" if ksdd is None else str(root)
    return [(f"{plan['ksdd_preset']} {width}x{height}, fold 0 of 33_33, {data}",
             f"epochs {', '.join(f'{s:.1f}' for s in epochs)} s; eval {eval_s:.1f} s ({metrics['n_images']} images); "
             f"AP {metrics['ap']:.3f} after {len(epochs)} epochs; projected {FOLDS} folds x {PAPER_EPOCHS} epochs: {projected / 60:.1f} min")]


def scoring(plan, work: Path) -> list[tuple[str, str]]:
    import numpy as np

    from defectkit.data.synthetic import generate
    from defectkit.methods.registry import get_method, load_method
    from defectkit.methods.trainer import fit

    rows = []
    for name, (preset, (width, height)) in plan["scoring"].items():
        data = generate(work / f"synthetic-{width}x{height}", n_train_good=16, n_train_defective=0, n_test_good=4, n_test_defective=4, size=(width, height), seed=1)
        run = work / f"scoring-{name}"
        fit(get_method(name).Config(dataset="synthetic", data_root=str(data), preset=preset, input_size=(width, height), epochs=1, batch_size=8,
                                    device=plan["device"]), run, log=lambda m: None)
        scorer = load_method(run, device=plan["device"])
        images = np.random.default_rng(0).random((plan["scoring_images"], scorer.pre.channels, height, width), dtype=np.float32)
        best, batches = {}, (1, min(8, len(images)))
        for batch in batches:
            scorer.score_batch(images[:batch])  # warm-up
            started = time.perf_counter()
            for i in range(0, len(images), batch):
                scorer.score_batch(images[i : i + batch])
            best[batch] = len(images) / (time.perf_counter() - started)
        rows.append((f"{name} {preset} {width}x{height}", f"{best[1]:.1f} images/s at batch 1, {best[batches[1]]:.1f} at batch {batches[1]}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes, on data written here (checks the script, not the GPU)")
    parser.add_argument("--ksdd", type=Path, default=None, help="KolektorSDD's folder (kos01 ...); without it the protocol step uses a dummy copy (dry run) or is skipped")
    parser.add_argument("--work", type=Path, default=None, help="folder for its runs (default: a temporary one, removed)")
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()
    plan = DRY if args.dry_run else REAL

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; use --dry-run to check the script on the CPU", file=sys.stderr)
        raise SystemExit(2)
    if args.ksdd is not None and not (args.ksdd / "kos01").is_dir():
        print(f"error: {args.ksdd}: not KolektorSDD (no kos01/)", file=sys.stderr)
        raise SystemExit(2)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "none (CPU dry run)"
    print(f"GPU check: {gpu}; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    table: list[tuple[str, str, str, str]] = []  # step, setting, result, seconds
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        steps = [("CUDA tests", lambda: cuda_tests(plan, work)), ("throughput", lambda: throughput(plan, work))]
        if args.ksdd is not None or args.dry_run:
            steps.append(("KSDD protocol", lambda: ksdd_protocol(plan, work, args.ksdd)))
        else:
            table.append(("KSDD protocol", "-", "skipped: no --ksdd folder", "0"))
        steps.append(("scoring", lambda: scoring(plan, work)))
        for step, run in steps:
            began = time.perf_counter()
            try:
                rows = run()
            except Exception as exc:  # the other steps still run; the row says why this one failed
                traceback.print_exc(file=sys.stderr)
                rows, failed = [("-", f"FAILED: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")], True
            seconds = f"{time.perf_counter() - began:.0f}"
            for setting, result in rows:
                table.append((step, setting, result, seconds))
                print(f"{step} | {setting} | {result}", flush=True)
    total = time.perf_counter() - started
    print()
    print("| step | setting | result | step s |")
    print("|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    print(f"\n{'dry run' if args.dry_run else gpu}: {total / 60:.1f} min in all{'; some steps FAILED' if failed else ''}")
    append_result(args.results, {"benchmark": "gpu_check", **provenance(), "gpu": gpu, "dry_run": args.dry_run, "minutes": round(total / 60, 2),
                                 "rows": [dict(zip(("step", "setting", "result", "seconds"), r)) for r in table]})
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
