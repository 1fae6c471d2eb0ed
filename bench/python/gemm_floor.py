"""The GEMM facts behind the ViT-B patching floor (docs/benchmarks.md, "Why ViT-B stops near 2.7x").

For the products a ViT-B/16 sweep runs (rows = patched runs x 197 tokens), prints torch.nn.functional
.linear's throughput at 1 and `torch.get_num_threads()` threads, and checks that its result does not
depend on how the product is cut or packed: the rows of a batch equal the same rows computed alone,
W x^T transposed equals x W^T, and MKL's prepacked weights (torch.ops.mkl._mkl_linear) give the same
bits. So a sweep can batch freely without leaving transformers' numbers, but it cannot make the
kernel itself faster: what it saves has to come from computing fewer products.
Usage: gemm_floor.py [--rows 1,4,8,16]   (torch 2.11 CPU, as in fixtures/requirements.txt)"""
import argparse
import time

import torch

SHAPES = {"qkv": (768, 2304), "w_o": (768, 768), "mlp in": (768, 3072), "mlp out": (3072, 768)}


def seconds(f, n=10):
    f()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,4,8,16", help="patched runs per product (x 197 tokens)")
    args = ap.parse_args()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, MKL {torch.backends.mkl.is_available()}")
    print(f"{'product':>8} {'rows':>4} {'GFLOPS 1 thr':>12} {'GFLOPS ' + str(threads) + ' thr':>12}  same bits: rows alone, transposed, prepacked")
    for name, (k, n) in SHAPES.items():
        w, b = torch.randn(n, k) * 0.05, torch.randn(n)
        for rows in (int(r) for r in args.rows.split(",")):
            m = rows * 197
            x = torch.randn(m, k)
            flops = 2 * m * k * n
            out = torch.nn.functional.linear(x, w, b)
            alone = torch.equal(torch.nn.functional.linear(x[:197], w, b), out[:197])
            transposed = torch.equal(torch.mm(w, x.t()).t(), torch.nn.functional.linear(x, w))
            packed = torch.equal(torch.ops.mkl._mkl_linear(x, torch.ops.mkl._mkl_reorder_linear_weight(w, m), w, b, m), out)
            rates = []
            # All threads first: returning to them after one thread rebuilds the OpenMP team.
            for t in (threads, 1):
                torch.set_num_threads(t)
                rates.append(flops / seconds(lambda: torch.nn.functional.linear(x, w, b)) / 1e9)
            torch.set_num_threads(threads)
            print(f"{name:>8} {rows:>4} {rates[1]:>12.0f} {rates[0]:>12.0f}  {alone}, {transposed}, {packed}")


if __name__ == "__main__":
    main()
