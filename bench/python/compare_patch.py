"""Compare two patching result JSONs (from patch_tl_way.py / patch_best.py, or any JSON with the same
"dims" and row-major "values", nulls skipped). Usage: compare_patch.py A.json B.json [--tol 1e-4]
Prints the max |a-b| over entries present in both and exits 1 if it exceeds --tol.
Also checks target/baseline/clean_metric/corrupt_metric agree."""
import argparse
import json
import sys

ap = argparse.ArgumentParser()
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--tol", type=float, default=1e-4)
args = ap.parse_args()
a, b = (json.load(open(p)) for p in (args.a, args.b))
ok = True
for k in ("target", "baseline"):
    if a.get(k) != b.get(k):
        print(f"{k} differs: {a.get(k)} vs {b.get(k)}")
        ok = False
for k in ("clean_metric", "corrupt_metric"):
    if k in a and k in b and abs(a[k] - b[k]) > args.tol:
        print(f"{k} differs: {a[k]} vs {b[k]}")
        ok = False
if list(a["dims"]) != list(b["dims"]):
    print(f"dims differ: {a['dims']} vs {b['dims']}")
    sys.exit(1)
both = [(i, x, y) for i, (x, y) in enumerate(zip(a["values"], b["values"])) if x is not None and y is not None]
if not both:
    print("no common entries")
    sys.exit(1)
worst = max(both, key=lambda t: abs(t[1] - t[2]))
diff = abs(worst[1] - worst[2])
cols = a["dims"][1]
print(f"{len(both)} common entries, max |diff| = {diff:.3e} at (row {worst[0] // cols}, col {worst[0] % cols}); "
      f"value range [{min(t[1] for t in both):.4f}, {max(t[1] for t in both):.4f}]")
ok = ok and diff <= args.tol
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
