"""Module A at lower precision (paper 001, section 4 and figures 4-8), measured on this CPU.

    python benchmarks/compress.py          # ~5 min once features are cached

For each variant (PyTorch fp32; ONNX Runtime fp32, fp16, int8 dynamic, int8 static calibrated on
10 training images per class): streaming LDA top-1/top-5 on imagenette (100 training images per
class, all test images) with that variant's features, model size on disk, p50 latency at batch 1
and throughput at batch 32 (decoded images; preprocessing included), at 224 and 96 px.
Writes benchmarks/results/compress.{json,md}.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.evaluation.variants import VARIANTS, compare_variants  # noqa: E402

SIZES = (224, 96)


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", default="imagenette")
    parser.set_defaults(seeds=1)
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        print(f"{args.dataset} {size} px", flush=True)
        for row in compare_variants(args.data / args.dataset, weights=args.weights, input_size=size, per_class=100,
                                    variants=VARIANTS, progress=lambda line: print("  " + line, flush=True)):
            rows.append({"size": size, **{k: v for k, v in row.items() if k != "path"}})
    report(args, rows)


def report(args, rows) -> None:
    def get(size, runtime, precision):
        return next(r for r in rows if r["size"] == size and r["runtime"] == runtime and r["precision"] == precision)

    summary = {}
    for r in rows:
        key = f"{r['runtime']}_{r['precision']}_{r['size']}"
        summary.update({f"top1_{key}": r["accuracy"], f"mib_{key}": r["bytes"] / 2**20, f"p50_ms_{key}": r["p50_ms"],
                        f"batch32_per_s_{key}": r["batch32_per_s"]})
    lines = ["# Module A at lower precision", "", f"`python benchmarks/compress.py` ({args.dataset}; streaming LDA "
             "on each variant's features: 100 training images per class, all test images; 2-core x86 VM, no GPU).",
             "", "| size | runtime | precision | top-1 | top-5 | MiB | p50 ms (batch 1) | img/s (batch 32) | "
             "top-1 vs fp32 | smaller | faster (p50) |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in SIZES:
        ref = get(size, "torch", "fp32")
        for r in [r for r in rows if r["size"] == size]:
            lines.append(f"| {size} | {r['runtime']} | {r['precision']} | {r['accuracy']:.2%} | {r['top5']:.2%} | "
                         f"{r['bytes'] / 2**20:.2f} | {r['p50_ms']:.1f} | {r['batch32_per_s']:.0f} | "
                         f"{100 * (r['accuracy'] - ref['accuracy']):+.2f} | {ref['bytes'] / r['bytes']:.2f}x | "
                         f"{ref['p50_ms'] / r['p50_ms']:.2f}x |")
        onnx = get(size, "onnx", "fp32")
        int8 = get(size, "onnx", "int8")
        summary[f"int8_vs_onnx_fp32_speedup_{size}"] = onnx["p50_ms"] / int8["p50_ms"]
        summary[f"int8_vs_onnx_fp32_smaller_{size}"] = onnx["bytes"] / int8["bytes"]
    lines += ["", "Ratios are against PyTorch fp32 (size: its parameters and buffers in memory; ONNX: the file). "
              "Latency and throughput vary by about 20 % between runs on this shared machine."]
    common.write_results(f"compress_{args.dataset}" if args.dataset != "imagenette" else "compress", summary,
                         {"dataset": args.dataset, "sizes": SIZES, "variants": VARIANTS, "weights": args.weights,
                          "per_class": 100, "calibration_per_class": 10}, rows, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
