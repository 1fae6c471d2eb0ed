"""The Python peer of `prisma run MODEL PHOTOS`: the model's own transformers image processor
(ViTImageProcessor, PIL) in a torch DataLoader with 2 worker processes, batches of 64 through
ViTForImageClassification under inference_mode, top-5 per photo. Prints one JSON line: photos,
seconds for the loop (first batch included) and for the whole script (imports and loading too).
Usage: peer.py MODEL_DIR PHOTO_DIR [THREADS]."""
import time

t0 = time.perf_counter()
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTForImageClassification

model_dir, photo_dir = sys.argv[1], Path(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
model = ViTForImageClassification.from_pretrained(model_dir).eval()
files = sorted(p for p in photo_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


class Photos(torch.utils.data.Dataset):
    def __len__(self):
        return len(files)

    def __getitem__(self, i):
        with Image.open(files[i]) as img:
            return processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]


if __name__ == "__main__":
    loader = torch.utils.data.DataLoader(Photos(), batch_size=64, num_workers=2)
    t1 = time.perf_counter()
    top = []
    with torch.inference_mode():
        for pixels in loader:
            top.extend(model(pixel_values=pixels).logits.topk(5, dim=-1).indices.tolist())
    t2 = time.perf_counter()
    print(json.dumps({"photos": len(top), "loopSeconds": round(t2 - t1, 2), "totalSeconds": round(t2 - t0, 2),
                      "imagesPerSecond": round(len(top) / (t2 - t1), 2)}))
