"""Sites that learn apart and know together: the paper's Table 4 protocol, and beyond it.

    python benchmarks/sites.py                 # 10 seeds (a few minutes once features are cached)

Each site learns only its own classes (100 images per class, every image seen once), saves a signed
knowledge package; packages are read back, checked and merged; the merged knowledge is tested on
all test images. Also: classes taught at two sites, non-IID class proportions (Dirichlet), several
exchange rounds, bytes per package, and the time to merge 100 packages.
Writes benchmarks/results/sites.{json,md} and a plot.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import common  # noqa: E402
from edgelearn.evaluation import evaluate_features, learn_stream  # noqa: E402
from edgelearn.knowledge import ImportPolicy, SiteKey, TrustStore  # noqa: E402
from edgelearn.learners import make_learner  # noqa: E402
from edgelearn.recognizer import Recognizer  # noqa: E402

DATASETS = ("imagenette", "neu_cls")
SIZE = 96  # the paper's ImageNet-10 resolution
LEARNERS = ("fuzzy_artmap", "slda", "ncm")
SITES = (1, 2, 5, 10)
PAPER = {1: (76.40, 1.2), 2: (76.26, 1.5), 5: (73.36, 2.5), 10: (74.86, 2.1)}  # Table 4, %


class Exchange:
    """Signed packages on disk, read back through the same checks a real site applies."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.keys: dict[str, SiteKey] = {}
        self.trust = TrustStore()

    def send(self, rec: Recognizer, site: str) -> tuple[Path, int]:
        if site not in self.keys:
            self.keys[site] = SiteKey.generate(site)
            self.trust.add(site, self.keys[site].private.public_key())
        path = rec.save(self.folder / f"{site}.edge", key=self.keys[site])
        return path, path.stat().st_size

    def receive(self, path: Path) -> Recognizer:
        return Recognizer.load(path, with_backbone=False, policy=ImportPolicy(self.trust))


def site_learners(kind, X, y, assignment, seed, fingerprint):
    """One recognizer per site, each learning its rows (``assignment[i]`` = site of row i) once."""
    rng = np.random.default_rng(seed)
    sites = []
    for s in sorted(set(assignment)):
        rows = rng.permutation(np.flatnonzero(assignment == s))
        rec = Recognizer(None, make_learner(kind), fingerprint=fingerprint)
        sites.append(rec.learn_features(X[rows], y[rows]))
    return sites


def exchange_once(sites, exchange, consolidate):
    sent = [exchange.send(rec, f"site{i}") for i, rec in enumerate(sites)]
    received = [exchange.receive(path) for path, _ in sent]
    merged = received[0].merge(*received[1:])
    if consolidate:
        merged.consolidate()
    return merged, [size for _, size in sent]


def by_classes(y, n_sites, rng):
    """Classes spread uniformly at random over sites (the paper's setting)."""
    classes = rng.permutation(sorted(set(y)))
    owner = {c: i for i, group in enumerate(np.array_split(classes, n_sites)) for c in group}
    return np.array([owner[c] for c in y])


def overlapping(y, n_sites, rng):
    """Every class taught at two random sites, its images split between them."""
    assignment = np.empty(len(y), int)
    for c in sorted(set(y)):
        rows = rng.permutation(np.flatnonzero(y == c))
        pair = rng.choice(n_sites, 2, replace=False)
        assignment[rows] = np.where(np.arange(len(rows)) % 2 == 0, pair[0], pair[1])
    return assignment


def dirichlet(y, n_sites, rng, alpha=0.5):
    """Non-IID: each class's images split over all sites with Dirichlet(alpha) proportions."""
    assignment = np.empty(len(y), int)
    for c in sorted(set(y)):
        rows = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet([alpha] * n_sites))[:-1] * len(rows)).astype(int)
        for s, part in enumerate(np.split(rows, cuts)):
            assignment[part] = s
    return assignment


def run_table(features, seeds, results):
    for ds in DATASETS:
        feats = features[ds]
        (Xall, yall, _), (Xt, yt, _) = feats["train"], feats["test"]
        for seed in seeds:
            idx = common.per_class_indices(yall, 100, seed)
            X, y = Xall[idx], yall[idx]
            for kind in LEARNERS:
                single = Recognizer(None, make_learner(kind), fingerprint=feats["fingerprint"])
                learn_stream(single, X, y, n_steps=min(10, len(set(y))), seed=seed)
                single_acc = evaluate_features(single, Xt, yt)["accuracy"]
                settings = [(f"{n} sites", n, by_classes) for n in SITES] + [
                    ("5 sites, overlapping classes", 5, overlapping),
                    ("5 sites, non-IID (Dirichlet 0.5)", 5, dirichlet)]
                for name, n, split in settings:
                    assignment = split(y, n, np.random.default_rng(seed))
                    for consolidate in ((False, True) if kind == "fuzzy_artmap" else (False,)):
                        with tempfile.TemporaryDirectory() as tmp:
                            sites = site_learners(kind, X, y, assignment, seed, feats["fingerprint"])
                            merged, sizes = exchange_once(sites, Exchange(Path(tmp)), consolidate)
                        acc = evaluate_features(merged, Xt, yt)["accuracy"]
                        results.append({"dataset": ds, "learner": kind, "seed": seed, "setting": name, "sites": n,
                                        "consolidated": consolidate, "accuracy": acc, "single_site": single_acc,
                                        "bytes_per_site": float(np.mean(sizes)),
                                        "merged_bytes": merged.learner.nbytes})
            print(f"  {ds} seed {seed} done", flush=True)


def run_rounds(features, seeds, n_sites=5, n_rounds=3):
    """Data arrive in rounds; each round every site learns its new data, sends its *own* knowledge
    (never what it received, so nothing is counted twice) and gets everyone's merged back."""
    feats = features["imagenette"]
    (Xall, yall, _), (Xt, yt, _) = feats["train"], feats["test"]
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        idx = common.per_class_indices(yall, 100, seed)
        X, y = Xall[idx], yall[idx]
        owner = by_classes(y, n_sites, rng)
        when = rng.integers(0, n_rounds, len(y))  # which round each image arrives in
        for kind in LEARNERS:
            own = [Recognizer(None, make_learner(kind), fingerprint=feats["fingerprint"]) for _ in range(n_sites)]
            central = Recognizer(None, make_learner(kind), fingerprint=feats["fingerprint"])
            with tempfile.TemporaryDirectory() as tmp:
                exchange = Exchange(Path(tmp))
                for r in range(n_rounds):
                    for s in range(n_sites):
                        new = np.flatnonzero((owner == s) & (when == r))
                        if len(new):
                            own[s].learn_features(X[new], y[new])
                    arrived = np.flatnonzero(when == r)
                    central.learn_features(X[arrived], y[arrived])
                    merged, sizes = exchange_once([o for o in own if o.classes], exchange, consolidate=False)
                    rows.append({"learner": kind, "seed": seed, "round": r + 1,
                                 "accuracy": evaluate_features(merged, Xt, yt)["accuracy"],
                                 "central": evaluate_features(central, Xt, yt)["accuracy"],
                                 "bytes_per_site": float(np.mean(sizes))})
    return rows


def package_sizes(features):
    """File size of one site's package holding all 10 imagenette classes (FAM consolidated)."""
    feats = features["imagenette"]
    Xall, yall, _ = feats["train"]
    idx = common.per_class_indices(yall, 100, 0)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        exchange = Exchange(Path(tmp))
        for kind in LEARNERS:
            rec = Recognizer(None, make_learner(kind), fingerprint=feats["fingerprint"])
            rec.learn_features(Xall[idx], yall[idx]).consolidate()
            sizes[kind] = exchange.send(rec, kind)[1]
    return sizes


def merge_speed(features, n_packages=100):
    """Time to read, verify and merge 100 signed packages (each site: one class, 10 images)."""
    feats = features["imagenette"]
    Xall, yall, _ = feats["train"]
    classes = sorted(set(yall))
    out = {}
    for kind in LEARNERS:
        with tempfile.TemporaryDirectory() as tmp:
            exchange = Exchange(Path(tmp))
            paths = []
            for i in range(n_packages):
                rows = np.flatnonzero(yall == classes[i % len(classes)])[(i // len(classes)) * 10:][:10]
                rec = Recognizer(None, make_learner(kind), fingerprint=feats["fingerprint"])
                paths.append(exchange.send(rec.learn_features(Xall[rows], yall[rows]), f"site{i}")[0])
            t0 = time.perf_counter()
            received = [exchange.receive(p) for p in paths]
            merged = received[0].merge(*received[1:])
            seconds = time.perf_counter() - t0
        out[kind] = {"seconds": seconds, "classes": len(merged.classes)}
    return out


def flower_simulation(data_root: Path, weights: str, n_sites: int = 10, learner: str = "ncm", seed: int = 0):
    """The paper's setting through Flower's simulation runtime: each site a virtual SuperNode with its
    own image folder (its classes, 100 images each), one exchange round, every site tested on all classes."""
    from flwr.simulation import run_simulation

    from edgelearn.data import FolderDataset
    from edgelearn.federation.knowledge.client_app import create_client_app
    from edgelearn.federation.knowledge.server_app import create_server_app

    train = FolderDataset.scan(data_root / "imagenette", "train")
    test = FolderDataset.scan(data_root / "imagenette", "test")
    labels = np.array(train.labels, dtype=object)
    idx = common.per_class_indices(labels, 100, seed)
    owner = by_classes(labels[idx], n_sites, np.random.default_rng(seed))
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for s in range(n_sites):  # a site's folder: symlinks to its own training images, all test images
            root = Path(tmp) / f"site{s}"
            for i in idx[owner == s]:
                (root / "train" / labels[i]).mkdir(parents=True, exist_ok=True)
                (root / "train" / labels[i] / train.paths[i].name).symlink_to(train.paths[i])
            for path, label in zip(test.paths, test.labels, strict=True):
                (root / "test" / label).mkdir(parents=True, exist_ok=True)
                (root / "test" / label / path.name).symlink_to(path)
            folders.append(str(root))
        keys = Path(tmp) / "keys"  # signed as a real federation is: each site and the server, all trusted
        for name in [Path(f).name for f in folders] + ["server"]:
            SiteKey.generate(name).save(keys)
        config = {"site-data": ",".join(folders), "workdir": f"{tmp}/work", "backbone": "mobilenet_v2",
                  "weights": weights, "input-size": SIZE, "learner": learner, "num-rounds": 1,
                  "min-sites": n_sites, "output": f"{tmp}/history.json", "keys-dir": str(keys),
                  "trust-dir": str(keys), "server-key": str(keys / "server.key")}
        t0 = time.perf_counter()
        run_simulation(create_server_app(config), create_client_app(config), num_supernodes=n_sites,
                       backend_config={"client_resources": {"num_cpus": 1}})
        seconds = time.perf_counter() - t0
        history = json.loads(Path(config["output"]).read_text())
    accs = [m["accuracy"] for m in history[0]["site_metrics"]]
    return {"learner": learner, "sites": n_sites, "seed": seed, "seconds": seconds, "site_accuracy": accs,
            "bytes_sent_per_site": float(np.mean(history[0]["bytes_sent_per_site"])),
            "bytes_merged": history[0]["bytes_merged"]}


def markdown(results, rounds, speed, sizes, flower, seeds, command):
    lines = [f"# Sites: learning apart, knowing together\n\n`{command}` — {len(seeds)} seeds, {SIZE} px, "
             "100 train images per class, accuracy % on all test images (mean ± std). 'single site' = one "
             "device learning every class in class-incremental steps (Table 3's reference).\n"]
    for ds in DATASETS:
        lines.append(f"\n## {ds}\n")
        lines.append("| setting | learner | merged | single site | merged - single | bytes per site | paper |")
        lines.append("|---|---|---:|---:|---:|---:|---|")
        settings = dict.fromkeys(r["setting"] for r in results if r["dataset"] == ds)
        for setting in settings:
            for kind in LEARNERS:
                for cons in ((False, True) if kind == "fuzzy_artmap" else (False,)):
                    rows = [r for r in results if r["dataset"] == ds and r["setting"] == setting
                            and r["learner"] == kind and r["consolidated"] == cons]
                    acc = common.mean_std([r["accuracy"] for r in rows])
                    single = common.mean_std([r["single_site"] for r in rows])
                    diff = np.mean([r["accuracy"] - r["single_site"] for r in rows])
                    n = rows[0]["sites"]
                    paper = (f"{PAPER[n][0]:.2f} ± {PAPER[n][1]:.1f}" if kind == "fuzzy_artmap" and ds == "imagenette"
                             and setting == f"{n} sites" else "")
                    label = kind + (" (consolidated)" if cons else "")
                    lines.append(f"| {setting} | {label} | {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} | "
                                 f"{100 * single['mean']:.2f} | {100 * diff:+.2f} | "
                                 f"{np.mean([r['bytes_per_site'] for r in rows]):,.0f} | {paper} |")
    lines.append("\n## Several exchange rounds (imagenette, 5 sites, data arriving over 3 rounds)\n")
    lines.append("| learner | round | merged | all data in one place | bytes per site |\n|---|---:|---:|---:|---:|")
    for kind in LEARNERS:
        for r in sorted({x["round"] for x in rounds}):
            rows = [x for x in rounds if x["learner"] == kind and x["round"] == r]
            lines.append(f"| {kind} | {r} | {100 * np.mean([x['accuracy'] for x in rows]):.2f} | "
                         f"{100 * np.mean([x['central'] for x in rows]):.2f} | "
                         f"{np.mean([x['bytes_per_site'] for x in rows]):,.0f} |")
    if flower:
        lines.append("\n## Through Flower's simulation runtime (imagenette, 96 px, 10 sites, one round, seed 0)\n")
        lines.append("| learner | accuracy at every site (%) | bytes sent per site | merged bytes | seconds |")
        lines.append("|---|---|---:|---:|---:|")
        for f in flower:
            accs = ", ".join(f"{100 * a:.1f}" for a in f["site_accuracy"])
            lines.append(f"| {f['learner']} | {accs} | {f['bytes_sent_per_site']:,.0f} | {f['bytes_merged']:,} "
                         f"| {f['seconds']:.0f} |")
    lines.append("\n## One site's signed package with all 10 imagenette classes (consolidated)\n")
    lines.append("| learner | bytes | MB (2^20) |\n|---|---:|---:|")
    for kind, size in sizes.items():
        lines.append(f"| {kind} | {size:,} | {size / 2**20:.3f} |")
    lines.append("\n## Merging 100 signed packages (read + verify + merge)\n")
    lines.append("| learner | seconds | classes |\n|---|---:|---:|")
    for kind, s in speed.items():
        lines.append(f"| {kind} | {s['seconds']:.3f} | {s['classes']} |")
    return "\n".join(lines) + "\n"


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in LEARNERS:
        rows = [r for r in results if r["dataset"] == "imagenette" and r["learner"] == kind
                and not r["consolidated"] and r["setting"] == f"{r['sites']} sites"]
        means = [100 * np.mean([r["accuracy"] for r in rows if r["sites"] == n]) for n in SITES]
        ax.plot(SITES, means, marker="o", label=kind)
    ax.plot(SITES, [PAPER[n][0] for n in SITES], "k--", label="paper (Fuzzy ARTMAP)")
    ax.set(xlabel="sites", ylabel="accuracy after one exchange (%)", title="imagenette, 96 px", xscale="log")
    ax.set_xticks(SITES, [str(n) for n in SITES])
    common.save_figure(fig, ax, "sites.png")


def main():
    parser = common.argument_parser(__doc__)
    parser.add_argument("--flower", action="store_true", help="also run 10 sites through Flower's simulation")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    command = f"python benchmarks/sites.py --seeds {args.seeds}" + (" --flower" if args.flower else "")
    print(f"{command}\nenv: {common.environment()}", flush=True)
    features = {ds: common.dataset_features(ds, SIZE, args.weights, args.data) for ds in DATASETS}
    results = []
    run_table(features, seeds, results)
    rounds = run_rounds(features, seeds)
    speed = merge_speed(features)
    sizes = package_sizes(features)
    flower = [flower_simulation(args.data, args.weights, learner=k) for k in LEARNERS] if args.flower else []
    summary = {f"package_bytes_10_classes_{k}": float(v) for k, v in sizes.items()}
    for kind in LEARNERS:
        for cons in ((False, True) if kind == "fuzzy_artmap" else (False,)):
            label = kind + ("_consolidated" if cons else "")
            for n in SITES:
                rows = [r for r in results if r["dataset"] == "imagenette" and r["learner"] == kind
                        and r["consolidated"] == cons and r["setting"] == f"{n} sites"]
                summary[f"imagenette_{label}_{n}sites_acc"] = float(np.mean([r["accuracy"] for r in rows]))
                summary[f"imagenette_{label}_{n}sites_minus_single"] = float(
                    np.mean([r["accuracy"] - r["single_site"] for r in rows]))
                summary[f"imagenette_{label}_{n}sites_bytes_per_site"] = float(
                    np.mean([r["bytes_per_site"] for r in rows]))
        summary[f"merge_100_packages_seconds_{kind}"] = speed[kind]["seconds"]
    config = {"datasets": DATASETS, "input_size": SIZE, "train_per_class": 100, "sites": SITES, "seeds": seeds,
              "weights": args.weights, "data": str(args.data), "command": command,
              "learners": {k: make_learner(k).get_params() for k in LEARNERS}}
    common.write_results("sites", summary, config,
                         {"table": results, "rounds": rounds, "merge_speed": speed, "package_bytes": sizes,
                          "flower": flower},
                         markdown(results, rounds, speed, sizes, flower, seeds, command))
    plot(results)
    for k, v in summary.items():
        print(f"{k}: {v:.4f}")


if __name__ == "__main__":
    main()
