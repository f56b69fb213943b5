"""Per-sample noise editing against moving along one direction, on the bundled models.

    python benchmarks/bench_edit.py                       # digits (and mnist when bundled)
    python benchmarks/bench_edit.py --models digits --per-class 20 --no-save

For each model, N = --per-class samples of every class (seeds 0..N-1, ``ctrlgan.noise``; class
i % C), and each target feature t of the model's reader (digits: thickness, slant, size), three
edits of the same samples:

  per-sample   training/edit.py's ascent with its defaults: increase t, keep the other targets
               (and "per-sample 0.1": the same with the source's penalty 0.1, at its own |dz|)
  gradient     the model's global gradient direction for t (the source's classifier
               gradients, ``ctrlgan directions --method gradient``'s defaults), z + |dz_i| d_t
  boundary     its boundary direction for t (the shipped table when its provenance says it is
               one, else found like ``ctrlgan directions``), z + |dz_i| d_t

where |dz_i| is the distance sample i moved in the per-sample edit: all three move every sample
by the same amount. Every image is measured by the model's *measurement* reader (digits: the
exact image moments), not by the network the edit ascends through, so that no edit is graded by
the reader it optimised. Reported per method, medians and means over samples:

  gain         change of t per unit |dz| (the feature's own units, like the effect matrix)
  leak k       |change of kept feature k| per unit |dz|
  leak/gain k  |change of k| / change of t, both in units of their spread over 1,000 samples of
               the model (ratio of the means over samples; median of the per-sample ratios)
  raised       share of samples whose t rose
  gain_read    (per-sample rows) the gain as the reader the edit ascended through saw it: far
               above the measured gain would mean the edit fools its reader

Then several targets at once (all but the last raised, the last lowered, one other feature
kept) and each target lowered alone: the share of samples each target moved its way. A sweep of
the per-sample edit's settings (penalty 0 to 10; steps and weight; the notebook's
accumulated gradients at its batch of 8) follows, the same metrics averaged over
the targets. Results: results/edit-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
# (label, edit_noise keyword arguments): the per-sample edit's settings swept
SWEEP = (
    ("penalty 0", {"penalty": 0.0}),
    ("penalty 0.1 (the source's)", {"penalty": 0.1}),
    ("penalty 0.3", {"penalty": 0.3}),
    ("penalty 1 (default: 10 steps, weight 0.1)", {}),
    ("penalty 3", {"penalty": 3.0}),
    ("penalty 10", {"penalty": 10.0}),
    ("5 steps, weight 0.2", {"steps": 5}),
    ("20 steps, weight 0.05", {"steps": 20}),
    ("10 steps, weight 0.03", {"weight": 0.03}),
    ("10 steps, weight 0.3", {"weight": 0.3}),
    ("10 steps, weight 1", {"weight": 1.0}),
    ("the notebook: accumulate, weight 0.1 / 8, penalty 0.1",
     {"accumulate": True, "weight": 0.1 / 8, "penalty": 0.1}),
)  # fmt: skip


def directions_for(artifact, generator, reader, targets):
    """{method: {feature: unit direction [Z]}} and where each came from."""
    from ctrlgan.training import directions as D

    info = artifact.manifest.provenance.get("directions") or {}
    found = {}
    steady = [n for n in reader.names if n not in reader.circular or n in targets]
    start = time.perf_counter()
    grad = D.gradient_directions(generator, reader.fn(steady, keep_grad=True), targets)
    found["gradient"] = dict(zip(grad.names, grad.table, strict=True))
    source = {
        "gradient": f"gradient_directions (512 samples, 20 steps of 0.1, lambda 1, seed 0; "
        f"{time.perf_counter() - start:.1f} s), as `ctrlgan directions --method gradient`"
    }
    names = list(artifact.manifest.directions)
    if info.get("method") == "boundary" and set(targets) <= set(names):
        names, table = D.load_table(artifact)
        if table.ndim == 2:
            found["boundary"] = {t: table[names.index(t)] for t in targets}
            source["boundary"] = f"the shipped table: {info.get('command', 'boundary')}"
    if "boundary" not in found:
        bound = D.boundary_directions(generator, reader.fn(targets), n=5000, seed=0)
        found["boundary"] = dict(zip(bound.names, bound.table, strict=True))
        source["boundary"] = "boundary_directions (5,000 samples, seed 0)"
    return found, source


def stats(values: np.ndarray) -> dict:
    return {"median": float(np.median(values)), "mean": float(np.mean(values))}


def measure(generator, meter, names, z, labels) -> dict[str, np.ndarray]:
    from ctrlgan.training.directions import render

    x = render(generator, torch.as_tensor(z), labels)
    return {k: v.double().numpy() for k, v in meter.measure(x, names, labels=labels).items()}


def metrics(before, after, dz, target, keep, unit) -> dict:
    """The module docstring's gain, leak, leak/gain and raised for one edit."""
    gain = after[target] - before[target]
    out = {
        "dz": stats(dz),
        "gain": stats(gain / dz),
        "target_change": stats(gain),
        "raised": float((gain > 0).mean()),
        "leak": {},
        "leak_over_gain": {},
    }
    for k in keep:
        moved = np.abs(after[k] - before[k])
        out["leak"][k] = stats(moved / dz)
        ratio = (moved / unit[k]) / np.maximum(np.abs(gain) / unit[target], 1e-12)
        out["leak_over_gain"][k] = {
            "ratio_of_means": float((moved / unit[k]).mean() / ((gain / unit[target]).mean())),
            "median": float(np.median(ratio)),
        }
    return out


def bench_model(name: str, per_class: int) -> dict:
    import ctrlgan
    from ctrlgan.artifact import Artifact
    from ctrlgan.training import edit, feature_net

    artifact = Artifact.open(name)
    generator = artifact.build_generator()
    reader, meter = feature_net.feature_sets(artifact)
    targets = [t for t in reader.defaults if t in meter.names]
    n_classes = len(artifact.manifest.classes)
    n = per_class * n_classes
    z0 = ctrlgan.noise(list(range(n)), artifact.manifest.z_dim)
    labels = torch.arange(n) % n_classes
    unit_reader = edit.spread(generator, reader)
    unit = edit.spread(generator, meter)
    found, source = directions_for(artifact, generator, reader, targets)
    before = measure(generator, meter, targets, z0, labels)
    rows, timing = [], {}
    for target in targets:
        keep = [k for k in targets if k != target]
        start = time.perf_counter()
        e = edit.ascend(generator, reader, labels, z0, [target], (), keep, scale=unit_reader)
        timing[target] = time.perf_counter() - start
        notebook = edit.ascend(generator, reader, labels, z0, [target], (), keep,
                               scale=unit_reader, penalty=0.1)  # fmt: skip
        dz = e.distance().astype(np.float64)
        moved = {
            "per-sample": (e.z[-1], dz),
            "per-sample 0.1": (notebook.z[-1], notebook.distance()),
        }
        for method, table in found.items():
            d = table[target].numpy()
            moved[method] = ((z0 + dz[:, None] * d[None, :]).astype(np.float32), dz)
        read = {"per-sample": e, "per-sample 0.1": notebook}
        for method, (z, distance) in moved.items():
            after = measure(generator, meter, targets, z, labels)
            distance = np.asarray(distance, dtype=np.float64)
            row = {"target": target, "method": method}
            row |= metrics(before, after, distance, target, keep, unit)
            if method in read:  # the change the edit saw, through the reader it ascended
                row["gain_read"] = stats(read[method].change(target) / distance)
            rows.append(row)
    sweep = []
    for label, kwargs in SWEEP:
        per_target = []
        for target in targets:
            keep = [k for k in targets if k != target]
            e = edit.ascend(generator, reader, labels, z0, [target], (), keep, scale=unit_reader,
                            **kwargs)  # fmt: skip
            after = measure(generator, meter, targets, e.z[-1], labels)
            dz = e.distance().astype(np.float64)
            per_target.append({"target": target} | metrics(before, after, dz, target, keep, unit))
        sweep.append({"setting": label, "kwargs": kwargs, "targets": per_target})
    # several targets at once, and each target lowered: the share of samples each target moved
    # its way (the score raises the mean of the signed targets, not each one)
    others = [f for f in reader.names if f not in targets and f not in reader.circular]
    roles = [(targets[:-1], targets[-1:], others[:1])]
    roles += [((), [t], [k for k in targets if k != t]) for t in targets]
    several = []
    for increase, decrease, keep in roles:
        e = edit.ascend(generator, reader, labels, z0, increase, decrease, keep,
                        scale=unit_reader)  # fmt: skip
        after = measure(generator, meter, targets, e.z[-1], labels)
        moved = {t: float((after[t] > before[t]).mean()) for t in increase}
        moved |= {t: float((after[t] < before[t]).mean()) for t in decrease}
        read = {t: float((e.change(t) > 0).mean()) for t in increase}
        read |= {t: float((e.change(t) < 0).mean()) for t in decrease}
        several.append(
            {"increase": list(increase), "decrease": list(decrease), "keep": list(keep),
             "moved_its_way": moved, "moved_its_way_read": read}
        )  # fmt: skip
    return {
        "model": name,
        "several_targets": several,
        "artifact": str(artifact.path),
        "samples": n,
        "per_class": per_class,
        "reader": reader.source,
        "measured_by": meter.source,
        "targets": targets,
        "spread": {k: unit[k] for k in targets},
        "directions": source,
        "edit_seconds_per_target": timing,
        "results": rows,
        "sweep": sweep,
    }


def print_model(result: dict) -> None:
    print(f"\n{result['model']}: {result['samples']} samples, edited through {result['reader']},")
    print(f"measured by {result['measured_by']}; directions: {result['directions']}")
    head = f"{'target':<10}{'method':<16}{'|dz|':>7}{'gain med':>10}{'gain mean':>10}{'raised':>8}"
    print(head + "   leak per |dz| med (leak/gain)")
    for r in result["results"]:
        leaks = "  ".join(
            f"{k} {v['median']:.4f} ({r['leak_over_gain'][k]['ratio_of_means']:.3f})"
            for k, v in r["leak"].items()
        )
        gain = r["gain"]
        print(
            f"{r['target']:<10}{r['method']:<16}{r['dz']['mean']:>7.3f}{gain['median']:>10.4f}"
            f"{gain['mean']:>10.4f}{r['raised']:>8.1%}   {leaks}"
        )
    print(
        f"\n{'per-sample setting':<56}{'|dz|':>7}{'gain/spread':>12}{'leak/gain':>10}{'raised':>8}"
    )
    for s in result["sweep_summary"]:
        print(
            f"{s['setting']:<56}{s['dz']:>7.3f}{s['gain']:>12.3f}{s['leak_over_gain']:>10.3f}"
            f"{s['raised']:>8.1%}"
        )


def print_several(result: dict) -> None:
    print("\nshare of samples each target moved its way (measured; as the reader saw it)")
    for r in result["several_targets"]:
        what = " ".join(
            f"{role} {','.join(r[role])}" for role in ("increase", "decrease", "keep") if r[role]
        )
        shares = "  ".join(
            f"{t} {v:.1%} ({r['moved_its_way_read'][t]:.1%})" for t, v in r["moved_its_way"].items()
        )
        print(f"  {what}: {shares}")


def summary(setting: dict, result: dict) -> dict:
    """A sweep setting averaged over targets: mean |dz|, mean gain in spreads per unit |dz|,
    mean leak/gain (ratio of means) over kept features, mean raised share."""
    rows = setting["targets"]
    unit = result["spread"]
    return {
        "dz": float(np.mean([r["dz"]["mean"] for r in rows])),
        "gain": float(np.mean([r["gain"]["mean"] / unit[r["target"]] for r in rows])),
        "leak_over_gain": float(
            np.mean([v["ratio_of_means"] for r in rows for v in r["leak_over_gain"].values()])
        ),
        "raised": float(np.mean([r["raised"] for r in rows])),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="digits,mnist", help="bundled models (%(default)s)")
    p.add_argument("--per-class", type=int, default=20, help="samples per class (%(default)s)")
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--out", type=Path, help="JSON path (default: results/edit-cpu-<date>.json)")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error("--per-class must be >= 1")
    from ctrlgan.artifact import bundled_models

    torch.manual_seed(0)
    results, notes = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in bundled_models():
            notes.append(f"{name}: not bundled here (ctrlgan/models/{name} absent), skipped")
            print(notes[-1])
            continue
        start = time.perf_counter()
        result = bench_model(name, args.per_class)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["sweep_summary"] = [
            {"setting": s["setting"]} | summary(s, result) for s in result["sweep"]
        ]
        print_model(result)
        print_several(result)
        results.append(result)
    if args.no_save or not results:
        return 0
    import ctrlgan
    from ctrlgan.runtime.bench import environment, save_json

    today = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"edit-cpu-{today}.json"
    env = environment(" ".join(["python", "benchmarks/bench_edit.py", *sys.argv[1:]]))
    env["versions"]["ctrlgan"] = ctrlgan.__version__
    save_json(out, {**env, "notes": notes, "models": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
