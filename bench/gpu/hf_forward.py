"""The GPU kit's Python measurements besides the patching peers (bench/gpu/run.sh):

  hf_forward.py forward --model DIR --device cuda --dtype bf16 --batch 64 --out F.json
      transformers' own forward (ViTForImageClassification, SDPA attention), images per second at a
      batch: median of 10 timed batches after 3 warm-ups, the GPU synchronised around each.
  hf_forward.py peak --out F.json
      the card's bf16 dense matrix-product rate: an 8192^3 product, mean of 10 after 3 warm-ups
      (the device notes measured 769-798 TFLOP/s on the lent H200 this way).
fp32 is IEEE fp32 (TF32 off), as in our core.
"""
import argparse
import json
import statistics
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(fn, device, warm=3, reps=10):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def forward(args):
    from transformers import ViTForImageClassification
    import transformers

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    model = ViTForImageClassification.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").eval().to(device)
    c = model.config
    px = torch.randn(args.batch, c.num_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
    px = px.to(device, dtype)
    with torch.inference_mode():
        times = timed(lambda: model(pixel_values=px).logits, device, reps=args.reps)
    s = statistics.median(times)
    return {"impl": "transformers", "attn_implementation": "sdpa", "device": args.device, "dtype": args.dtype,
            "batch": args.batch, "seconds": s, "images_per_s": args.batch / s, "seconds_runs": times,
            "torch": torch.__version__, "transformers": transformers.__version__}


def peak(args):
    device = torch.device("cuda")
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = timed(lambda: a @ b, device)
    s = statistics.mean(times)
    return {"what": "bf16 8192^3 matrix product, mean of 10", "tflops": 2 * n**3 / s / 1e12,
            "device_name": torch.cuda.get_device_name(0), "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["forward", "peak"])
    ap.add_argument("--model")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    res = forward(args) if args.what == "forward" else peak(args)
    with open(args.out, "w") as f:
        json.dump(res, f)
    print(json.dumps({k: v for k, v in res.items() if k != "seconds_runs"}))


if __name__ == "__main__":
    main()
