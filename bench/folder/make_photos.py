"""500 JPEG photos of mixed sizes for bench/folder, made from the real photos scikit-image 0.26
ships (skimage/data: astronaut, chelsea, coffee, rocket, the two motorcycles, Hubble deep field,
retina, camera and moon; CC0 / public domain) by seeded random crops (40-100 % of each side),
rescales (long side 160-1024 px, Pillow LANCZOS), mirror flips and JPEG qualities 80-95.
Usage: make_photos.py OUT_DIR [COUNT]. Uses bench/folder/requirements.txt."""
import os
import random
import sys
from pathlib import Path

import skimage
from PIL import Image

SOURCES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
           "hubble_deep_field.jpg", "retina.jpg", "camera.png", "moon.png"]

out = Path(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 500
out.mkdir(parents=True, exist_ok=True)
data = Path(os.path.dirname(skimage.__file__)) / "data"
photos = [Image.open(data / name).convert("RGB") for name in SOURCES]
rng = random.Random(0)
for i in range(count):
    img = photos[i % len(photos)]
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = img.crop((left, top, left + cw, top + ch))
    long_side = rng.randint(160, 1024)
    scale = long_side / max(cw, ch)
    crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop.save(out / f"photo-{i:04d}.jpg", quality=rng.randint(80, 95))
print(f"{out}: {count} JPEG photos")
