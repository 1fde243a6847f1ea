"""Surface inspection by patches (paper 003), measured on this CPU.

    python benchmarks/inspection.py            # ~45 min on 2 cores (the teacher's fine-tuning is most of it)

NEU-CLS (6 steel-defect classes, 1,440 training / 360 test images of 200x200): the paper's
protocol with 160-pixel patches, a 3x3 grid of overlapping test patches, majority vote.
- Teacher: ImageNet MobileNetV2 fine-tuned (all layers, 8 epochs, cosine from 5e-4) on one random
  patch per image and epoch.
- Student (paper Table 1, filters 8-16-32-8-8, 64 hidden units, the patches scaled to 96 px):
  distilled by regressing the teacher's logits (eq. 1) mixed half and half with the labels, on 8
  random flipped/rotated patches per training image, 20 epochs.
- Control: the same student trained from scratch on the same patches with the labels only.
Reports accuracy, per-class TPR/TNR, parameters, ms per image (a batch of the image's 9 patches,
PyTorch, 2 threads and 1 thread), and gamma / sparsity / disentanglement d (test images' centre
patches). Models go to --work (reused with --reuse). Writes benchmarks/results/inspection.{json,md,png}.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.data import FolderDataset  # noqa: E402
from edgelearn.data.patches import PatchGrid  # noqa: E402
from edgelearn.inspection import Inspector, distill, evaluate_inspection  # noqa: E402
from edgelearn.inspection.analysis import analyse_model, plot_analysis  # noqa: E402
from edgelearn.training import TrainConfig, train  # noqa: E402


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", default="neu_cls")
    parser.add_argument("--patch", type=int, default=160)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--teacher-lr", type=float, default=5e-4)
    parser.add_argument("--student-epochs", type=int, default=20)
    parser.add_argument("--filters", default="8,16,32,8,8")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the hard labels when distilling")
    parser.add_argument("--patches-per-image", type=int, default=8)
    parser.add_argument("--student-input", type=int, default=96, help="patches scaled down for the students")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgelearn-inspection"))
    parser.add_argument("--reuse", action="store_true", help="keep models already trained in --work")
    args = parser.parse_args()
    data = args.data / args.dataset
    args.work.mkdir(parents=True, exist_ok=True)
    grid = PatchGrid(args.patch, args.grid)
    filters = tuple(int(v) for v in args.filters.split(","))
    models = {"teacher": args.work / "teacher.pt", "student (distilled)": args.work / "student.pt",
              "student (scratch)": args.work / "scratch.pt"}
    log = lambda line: print("  " + line, flush=True)  # noqa: E731
    timings = {}
    if not (args.reuse and models["teacher"].is_file()):
        print("teacher: fine-tuning MobileNetV2 on patches", flush=True)
        teacher = TrainConfig(data, models["teacher"], weights=args.weights, strategy="full",
                              epochs=args.teacher_epochs, lr=args.teacher_lr, patch=grid)
        timings["teacher"] = _timed(train, teacher, log=log)
    for name, teacher in (("student (distilled)", models["teacher"]), ("student (scratch)", None)):
        if not (args.reuse and models[name].is_file()):
            print(name, flush=True)
            timings[name] = _timed(distill, data, models[name], teacher=teacher, patch=None if teacher else grid,
                                   filters=filters, hidden=args.hidden, epochs=args.student_epochs,
                                   patches_per_image=args.patches_per_image, input_size=args.student_input,
                                   alpha=args.alpha if teacher else 0.0, log=log)
    test = FolderDataset.splits(data)[1]
    rows, analyses = {}, {}
    for name, path in models.items():
        inspector = Inspector.load(path)
        rows[name] = evaluate_inspection(inspector, test)
        rows[name]["ms_per_image"] = inspector.ms_per_image()
        with _threads(1):
            rows[name]["ms_per_image_1_thread"] = inspector.ms_per_image()
        analyses[name] = analyse_model(path, test, initial_weights=args.weights)
        print(f"{name}: accuracy {rows[name]['accuracy']:.2%}, {rows[name]['parameters']:,} parameters, "
              f"{rows[name]['ms_per_image']:.2f} ms/image, d = {analyses[name]['disentanglement']['d']:.3f}",
              flush=True)
    plot_analysis(analyses, common.RESULTS / "inspection.png")
    report(args, rows, analyses, timings)


def _timed(run, *args, **kwargs) -> float:
    import time

    start = time.perf_counter()
    run(*args, **kwargs)
    return time.perf_counter() - start


class _threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def report(args, rows, analyses, timings) -> None:
    teacher, student, scratch = (rows[k] for k in ("teacher", "student (distilled)", "student (scratch)"))
    summary = {
        "teacher_accuracy": teacher["accuracy"], "student_accuracy": student["accuracy"],
        "scratch_student_accuracy": scratch["accuracy"],
        "student_minus_teacher_points": 100 * (student["accuracy"] - teacher["accuracy"]),
        "parameter_ratio": teacher["parameters"] / student["parameters"],
        "speedup": teacher["ms_per_image"] / student["ms_per_image"],
        "speedup_1_thread": teacher["ms_per_image_1_thread"] / student["ms_per_image_1_thread"],
        **{f"d_{k.split()[-1].strip('()')}": a["disentanglement"]["d"] for k, a in analyses.items()},
        **{f"train_seconds_{k.split()[-1].strip('()')}": v for k, v in timings.items()},
    }
    classes = list(teacher["per_class"])
    lines = ["# Surface inspection by patches (paper 003)", "",
             f"`python benchmarks/inspection.py` ({args.dataset}: {teacher['images']} test images, "
             f"{args.patch}-px patches, {args.grid}x{args.grid} grid; teacher {args.teacher_epochs} epochs, "
             f"students {args.student_epochs} epochs; 2-core x86 VM, no GPU).", "",
             "| model | accuracy | parameters | ms/image (2 threads) | ms/image (1 thread) | d |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['accuracy']:.2%} | {r['parameters']:,} | {r['ms_per_image']:.2f} | "
                     f"{r['ms_per_image_1_thread']:.2f} | {analyses[name]['disentanglement']['d']:.3f} |")
    lines += ["", f"Student vs teacher: {summary['student_minus_teacher_points']:+.2f} points, "
              f"1/{summary['parameter_ratio']:.0f} of the parameters, {summary['speedup']:.1f}x faster "
              f"({summary['speedup_1_thread']:.1f}x on one thread).", "",
              "Per class TPR / TNR (one class against the rest, as paper 003's Table 3):", "",
              "| class | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(f"{r['per_class'][c]['tpr']:.1%} / {r['per_class'][c]['tnr']:.1%}"
                                               for r in rows.values()) + " |")
    lines += ["", "Representation (test images' centre patches; γ and s per layer in inspection.png):", "",
              "| model | mean γ, first half of conv layers | mean γ, second half | s of last conv layer | d |",
              "|---|---:|---:|---:|---:|"]
    for name, a in analyses.items():
        gammas = list(a["weight_change"].values())
        half = len(gammas) // 2
        sparsity = list(a["sparsity"].values())
        lines.append(f"| {name} | {sum(gammas[:half]) / max(half, 1):.3f} | "
                     f"{sum(gammas[half:]) / max(len(gammas) - half, 1):.3f} | {sparsity[-1]:.1%} | "
                     f"{a['disentanglement']['d']:.3f} |")
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    common.write_results("inspection", summary, config,
                         {"rows": rows, "analyses": analyses, "train_seconds": timings},
                         "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
