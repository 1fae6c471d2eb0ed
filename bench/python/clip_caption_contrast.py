"""Does a CLIP trained by `prisma train --clip` see the largest object's shape and colour? Zero-shot
prompts like "a large circle" never occur in clevr-lite captions (they always name size, colour
and shape), so a weak zero-shot score can be the prompt's fault rather than the image tower's.
This scores each image against its own full caption and the captions that differ only in the
largest object's shape (3 candidates), or only in its colour (6 candidates).

Usage: clip_caption_contrast.py MODEL_DIR CLEVR_DIR [--last N]   (default: the last 1200 images,
the held-out split of `prisma train --clip` on a 12000-image folder). Uses transformers' CLIPModel
(fixtures/check_clip_transformers.py checks it agrees with prisma). Prints JSON.
"""
import argparse
import json
import math
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, CLIPModel

SIZES = ["small", "large"]
ATTRS = {"shape": ["circle", "square", "triangle"], "colour": ["red", "green", "blue", "yellow", "purple", "cyan"]}


def area(o):
    k = {"circle": math.pi, "square": 4, "triangle": 2}[o["shape"]]
    return k * o["radius"] ** 2


def largest(objs):
    """src/dataset/clevr.ts largestObject: larger size class, then larger area, then earlier."""
    best = 0
    for i, o in enumerate(objs):
        b = objs[best]
        d = SIZES.index(o["size"]) - SIZES.index(b["size"])
        if d > 0 or (d == 0 and area(o) > area(b)):
            best = i
    return best


def caption(objs):
    """src/dataset/clevr.ts captionFor."""
    parts = [f"a {o['size']} {o['colour']} {o['shape']}" for o in objs]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--last", type=int, default=1200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = CLIPModel.from_pretrained(args.model).eval()
    proc = AutoProcessor.from_pretrained(args.model)
    data = Path(args.data)
    records = [json.loads(l) for l in open(data / "labels.jsonl") if l.strip()][-args.last:]
    hits = {a: 0 for a in ATTRS}
    for r in records:
        image = Image.open(data / r["image"]).convert("RGB")
        li = largest(r["objects"])
        for attr, values in ATTRS.items():
            texts = []
            for v in values:
                objs = [dict(o) for o in r["objects"]]
                objs[li][attr] = v
                texts.append(caption(objs))
            enc = proc(text=texts, images=[image], return_tensors="pt", padding=True)
            with torch.no_grad():
                logits = model(**enc).logits_per_image[0]
            hits[attr] += values[int(logits.argmax())] == r["objects"][li][attr]
    n = len(records)
    print(json.dumps({"model": args.model, "images": n,
                      "largest_shape_by_caption": hits["shape"] / n, "chance_shape": 1 / 3,
                      "largest_colour_by_caption": hits["colour"] / n, "chance_colour": 1 / 6}, indent=1))


if __name__ == "__main__":
    main()
