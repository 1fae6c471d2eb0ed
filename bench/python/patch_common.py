"""Shared CLI, model/pixel loading, metric and JSON output for patch_tl_way.py and patch_best.py.

Both scripts are benchmarks of *Python* activation patching on Hugging Face ViTs, used to compare
our tool's results (values) and speed. By default everything runs on the CPU, fp32, eval,
torch.no_grad, torch.set_num_threads(2); `--device cuda --dtype bf16` is the GPU kit's setting
(bench/gpu/run.sh), where fp32 means IEEE fp32 (no TF32), as in our core.
"""
import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import ViTForImageClassification

THREADS = 2


def parse_args(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True, help="HF ViTForImageClassification folder")
    ap.add_argument("--sweep", required=True, choices=["resid", "head"],
                    help="resid: resid_pre by (layer, pos); head: head output (z slice) by (layer, head)")
    ap.add_argument("--pixels", help="safetensors file with key pixel_values [N,3,H,W]")
    ap.add_argument("--clean-index", type=int, default=0)
    ap.add_argument("--corrupt-index", type=int, default=1)
    ap.add_argument("--random-224", type=int, metavar="SEED",
                    help="instead of --pixels: clean, corrupt = two seeded randn [1,3,S,S] (S = model image size)")
    ap.add_argument("--save-pixels", metavar="FILE",
                    help="write the [clean, corrupt] pixels used as pixel_values [2,3,H,W] (to feed our tool)")
    ap.add_argument("--target", type=int, help="metric target class (default: clean top-1)")
    ap.add_argument("--baseline", type=int, help="metric baseline class (default: corrupt top-1)")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--max-layers", type=int, help="only sweep the first N layers")
    ap.add_argument("--sample", type=int, metavar="K",
                    help="run K randomly chosen patches (of the swept grid) and extrapolate the sweep time")
    ap.add_argument("--sample-seed", type=int, default=0, help="seed for --sample (same patches in both scripts)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="HF attention implementation")
    ap.add_argument("--chunk", type=int, default=None, help="(patch_best.py) patches per batched forward")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up forward")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="model and pixel dtype")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run caching + sweep R times; seconds = median, seconds_min/seconds_runs also written")
    return ap.parse_args()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE = torch.device("cpu")


def setup(args=None):
    global DEVICE
    DEVICE = torch.device(getattr(args, "device", "cpu"))
    if DEVICE.type == "cpu":
        torch.set_num_threads(THREADS)
    else:
        # fp32 is IEEE fp32 on the GPU too (PyTorch lets cuDNN convolutions use TF32 by default).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_grad_enabled(False)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def pre_hook(module, fn):
    """Call fn(x) on the module's first input before it runs, whether it comes positionally or as
    hidden_states=... (transformers releases differ); fn reads x or edits it in place."""
    def hook(mod, args, kwargs):
        fn(args[0] if args else kwargs["hidden_states"])
    return module.register_forward_pre_hook(hook, with_kwargs=True)


def load_model(path, attn, dtype="fp32"):
    model = ViTForImageClassification.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn)
    model.eval().to(DEVICE)
    return model


def load_pixels(args, model):
    if args.random_224 is not None:
        size = model.config.image_size
        g = torch.Generator().manual_seed(args.random_224)
        px = torch.randn(2, model.config.num_channels, size, size, generator=g, dtype=torch.float32)
        clean, corrupt = px[0:1].clone(), px[1:2].clone()
    else:
        if not args.pixels:
            raise SystemExit("need --pixels FILE or --random-224 SEED")
        px = load_file(args.pixels)["pixel_values"].to(torch.float32)
        clean = px[args.clean_index:args.clean_index + 1].clone()
        corrupt = px[args.corrupt_index:args.corrupt_index + 1].clone()
    if args.save_pixels:
        save_file({"pixel_values": torch.cat([clean, corrupt]).contiguous()}, args.save_pixels)
    dtype = DTYPES[getattr(args, "dtype", "fp32")]
    return clean.to(DEVICE, dtype), corrupt.to(DEVICE, dtype)


def dims(model, args):
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    if args.max_layers is not None:
        n_layers = min(n_layers, args.max_layers)
    if args.sweep == "resid":
        n_pos = (cfg.image_size // cfg.patch_size) ** 2 + 1
        return n_layers, n_pos
    return n_layers, cfg.num_attention_heads


def patch_list(n_rows, n_cols, args):
    """All (row, col) patches of the grid in row-major order, or a seeded random sample of K of them
    (sorted, so both scripts see the same list)."""
    full = [(r, c) for r in range(n_rows) for c in range(n_cols)]
    if args.sample is None or args.sample >= len(full):
        return full, False
    rng = random.Random(args.sample_seed)
    return sorted(rng.sample(full, args.sample)), True


def resolve_metric(args, clean_logits, corrupt_logits):
    target = args.target if args.target is not None else int(clean_logits[0].argmax())
    baseline = args.baseline if args.baseline is not None else int(corrupt_logits[0].argmax())
    if target == baseline:
        print(f"warning: target == baseline == {target}: the metric is identically 0")
    return target, baseline


def metric(logits, target, baseline):
    """logits [B, C] -> [B] logit difference (fp32, whatever the model's dtype)."""
    logits = logits.float()
    return logits[:, target] - logits[:, baseline]


def sweep_result(t, values, *, seconds_cache, target, baseline, clean_logits, corrupt_logits, **extra):
    """What a sweep's run_once returns: its values, its times (from Timer t) and the two end metrics."""
    return dict(values=values, seconds=t.elapsed(), cpu_seconds=t.cpu(), seconds_cache=seconds_cache,
                target=target, baseline=baseline,
                clean_metric=float(metric(clean_logits, target, baseline)[0]),
                corrupt_metric=float(metric(corrupt_logits, target, baseline)[0]), **extra)


def print_metrics(r):
    print(f"target {r['target']} baseline {r['baseline']} clean_metric {r['clean_metric']:.6f} "
          f"corrupt_metric {r['corrupt_metric']:.6f}")


class Timer:
    """Wall and CPU time; on a GPU the queued work is waited for at both ends."""

    def __init__(self):
        sync()
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()

    def elapsed(self):
        sync()
        return time.perf_counter() - self.t0

    def cpu(self):
        """Process CPU seconds (all threads) since start: ~threads x wall when the cores were ours."""
        return time.process_time() - self.c0


def repeat(args, run_once):
    """Call run_once() -> dict(values, seconds, seconds_cache, ...) args.repeat times; return the last
    result with seconds/seconds_cache replaced by the medians and the per-run lists attached."""
    runs = [run_once() for _ in range(max(1, args.repeat))]
    for r in runs[1:]:
        assert r["values"] == runs[0]["values"], "repeats gave different values"
    res = dict(runs[-1])
    if len(runs) > 1:
        for k in ("seconds", "seconds_cache"):
            xs = sorted(r[k] for r in runs)
            res[k] = xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])
            res[k + "_min"] = xs[0]
            res[k + "_runs"] = [r[k] for r in runs]
    return res


def write_result(args, impl, model, *, target, baseline, clean_metric, corrupt_metric, n_rows, n_cols,
                 patches, values, sampled, seconds, seconds_cache, forwards, extra=None, **timing):
    grid = [None] * (n_rows * n_cols)
    for (r, c), v in zip(patches, values):
        grid[r * n_cols + c] = float(v)
    total_layers = model.config.num_hidden_layers
    res = {
        "impl": impl,
        "model": str(Path(args.model).expanduser().resolve().name),
        "model_path": str(Path(args.model).expanduser().resolve()),
        "sweep": args.sweep,
        "pixels": ("random-224 seed %d" % args.random_224) if args.random_224 is not None else args.pixels,
        "clean_index": args.clean_index if args.random_224 is None else 0,
        "corrupt_index": args.corrupt_index if args.random_224 is None else 1,
        "target": target,
        "baseline": baseline,
        "clean_metric": float(clean_metric),
        "corrupt_metric": float(corrupt_metric),
        "dims": [n_rows, n_cols],
        "values": grid,  # row-major; null where a patch was not run (--sample)
        "seconds": seconds,  # the sweep itself (patched forwards), excludes model load and caching
        "seconds_cache": seconds_cache,  # clean + corrupt reference forwards with caching
        "seconds_total": seconds + seconds_cache,
        "forwards": forwards,  # forward calls in the sweep (a batched/partial forward counts as one)
        "attn_implementation": args.attn,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": str(DEVICE),
        "dtype": getattr(args, "dtype", "fp32"),
        "loadavg_at_end": list(os.getloadavg()),
    }
    mode = "full"
    if args.max_layers is not None and n_rows < total_layers:
        mode = f"max-layers {n_rows} of {total_layers}"
    if sampled:
        n_grid = n_rows * n_cols
        res["sampled"] = True
        res["patches_measured"] = len(patches)
        res["seconds_measured"] = seconds
        res["seconds_extrapolated"] = seconds / len(patches) * n_grid
        res["sampled_patches"] = [[r, c] for r, c in patches]
        mode = f"sample {len(patches)} of {n_grid} (seed {args.sample_seed}), extrapolated"
    else:  # same keys as a sampled run: nothing extrapolated
        res["sampled"] = False
        res["patches_measured"] = len(patches)
        res["seconds_extrapolated"] = None
    res["mode"] = mode
    res["repeat"] = max(1, args.repeat)
    res.update(timing)  # seconds_min, seconds_runs, seconds_cache_min, seconds_cache_runs when --repeat > 1
    if extra:
        res.update(extra)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f)
    summary = {k: res[k] for k in ("impl", "sweep", "mode", "target", "baseline", "clean_metric",
                                   "corrupt_metric", "dims", "seconds", "seconds_cache", "forwards")}
    for k in ("seconds_min", "seconds_extrapolated", "seconds_extrapolated_all_layers", "chunk"):
        if k in res:
            summary[k] = res[k]
    print(json.dumps(summary))
    return res
