"""The `ctrlgan` command: train, sample, generate, interpolate, directions, traverse,
export, bench, info.

User mistakes print one line on stderr and exit with status 2; Ctrl-C during training saves a
checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from pathlib import Path

from ctrlgan import __version__
from ctrlgan.errors import CtrlganError, InvalidRequest


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and still exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_list(text: str, field: str) -> list[int]:
    """'3', '0-9', '1,4,7' or '0-3,8' -> a list of ints."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                first, last = int(lo), int(hi)
                if last < first:
                    raise ValueError
                out.extend(range(first, last + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InvalidRequest(field, f"expected N, N-M or a comma list, got {text!r}") from None
    return out


def parse_class_spec(text: str, names: list[str]) -> list[int]:
    """--class: 'all', indices and ranges ('3', '0-9', '1,4'), or class names ('heart,square')."""
    if text == "all":
        return list(range(len(names)))
    result = []
    for part in text.split(","):
        part = part.strip()
        if part in names:
            result.append(names.index(part))
        else:
            for c in _int_list(part, "class"):
                if not 0 <= c < len(names):
                    raise InvalidRequest(
                        "class",
                        f"{c} out of range 0..{len(names) - 1} (classes: {', '.join(names)})",
                    )
                result.append(c)
    return result


def parse_steer(items: list[str]) -> dict[str, float]:
    steer = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            steer[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise InvalidRequest("steer", f"expected name=alpha, got {item!r}")
    return steer


def parse_correlate(text: str) -> list:
    """--correlate 'scale:pos_y:0.8' -> ['scale', 'pos_y', 0.8]."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return [parts[0], parts[1], float(parts[2])]
    except ValueError:
        raise InvalidRequest("correlate", f"expected A:B:RHO, got {text!r}") from None


# Commands --------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from ctrlgan.training.train import TrainConfig, TrainingInterrupted, train

    if args.threads < 0:
        raise InvalidRequest("threads", f"must be >= 0 (0: torch's default), got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    options["correlate"] = [parse_correlate(c) for c in args.correlate]
    config = TrainConfig(
        **options,
        command=shlex.join(["ctrlgan", *args.argv]),
    )
    try:
        result = train(config, progress=not args.quiet)
    except TrainingInterrupted as e:
        print(f"ctrlgan: {e}", file=sys.stderr)
        return 130
    print(f"model written to {result.artifact.path} ({result.steps} steps, {result.seconds:.0f} s)")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import ctrlgan

    g = ctrlgan.load(args.model, backend=args.backend)
    classes = parse_class_spec(args.cls, g.classes)
    if args.n < 1:
        raise InvalidRequest("n", f"must be >= 1, got {args.n}")
    if args.scale < 1:
        raise InvalidRequest("scale", f"must be >= 1, got {args.scale}")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise InvalidRequest("output", f"must be a .png file, got {str(out)!r}")
    if not 0 <= args.seed <= 2**64 - args.n:
        raise InvalidRequest("seed", f"seeds must lie in [0, 2**64), got first seed {args.seed}")
    if args.n * len(classes) > g.max_batch:
        raise InvalidRequest(
            "n", f"{args.n} x {len(classes)} classes exceeds the batch limit {g.max_batch}"
        )
    # A class-by-seed grid: one row per class, the same n seeds in every row.
    seeds = [args.seed + i for i in range(args.n)] * len(classes)
    rows = [c for c in classes for _ in range(args.n)]
    x = g.sample(
        rows,
        seeds,
        steer=parse_steer(args.steer),
        truncation=args.truncation,
    )
    nrow = args.n if len(classes) > 1 else min(args.n, 8)
    ctrlgan.save_grid(x, out, nrow=nrow, scale=args.scale)
    names = ", ".join(g.classes[c] for c in classes)
    print(f"wrote {out} ({len(classes)} class(es) [{names}] x {args.n} seed(s) from {args.seed})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import ctrlgan
    from ctrlgan.runtime.jobs import JobSpec, run_job

    g = ctrlgan.load(args.model, backend=args.backend)
    spec = JobSpec(
        classes=parse_class_spec(args.classes, g.classes),
        per_class=args.per_class,
        seed=args.seed,
        steer=parse_steer(args.steer),
        truncation=args.truncation,
        format=args.format,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
    )
    r = run_job(g, spec, args.out, progress=not args.quiet)
    done = f"{r.total_images} images in {r.n_shards} shard(s)"
    if r.repaired:
        print(
            f"rewrote {len(r.repaired)} shard(s) that no longer matched job.json: "
            f"{', '.join(r.repaired)}"
        )
    if not r.written:
        print(f"{r.out_dir}: job already complete ({done}, verified); nothing to do")
        return 0
    rate = r.images_written / r.seconds if r.seconds > 0 else float("inf")
    resumed = f", resumed after {r.done_before} done" if r.done_before else ""
    print(
        f"wrote {len(r.written)} shard(s){resumed} to {r.out_dir}: {r.images_written} images "
        f"in {r.seconds:.1f} s ({rate:.0f} images/s); job complete: {done}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ctrlgan.artifact import Artifact

    artifact = Artifact.open(args.model)
    m = artifact.manifest
    if args.json:
        print(m.to_json(), end="")
        return 0
    p = m.provenance
    print(f"model        {artifact.path}")
    print(f"classes      {len(m.classes)}: {', '.join(m.classes)}")
    print(f"image        {'x'.join(map(str, m.image_shape))} (C x H x W) in {m.value_range}")
    print(f"z_dim        {m.z_dim}   embedding {m.embedding}")
    print(f"directions   {', '.join(m.directions) or 'none'}")
    print(f"trained on   {p.get('dataset', '?')} ({p.get('n_images', '?')} images)")
    print(f"steps        {p.get('steps', '?')}   seed {p.get('seed', '?')}")
    print(f"command      {p.get('command', '?')}")
    for name, value in p.get("metrics", {}).items():
        print(
            f"metric       {name} = {value:.4f}"
            if isinstance(value, float)
            else f"metric       {name} = {value}"
        )
    for name, digest in m.files.items():
        print(f"file         {name}  sha256 {digest[:16]}…  (verified)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ctrlgan.export import onnx as export

    if not args.check_only:
        artifact = export.export(args.model)
        for name in export.ONNX_FILES:
            size = (artifact.path / name).stat().st_size
            print(f"wrote {artifact.path / name} ({size / 1e6:.2f} MB)")
    if not (args.check or args.check_only):
        return 0
    rows = export.check(args.model, reference_batches=args.reference_batches)
    print(f"{'file':<22}{'runner':<13}{'batch':>6}{'max |error|':>14}{'limit':>9}")
    for r in rows:
        verdict = "ok" if r.ok else "FAIL"
        print(
            f"{r.file:<22}{r.runner:<13}{r.batch:>6}{r.max_abs_error:>14.2e}"
            f"{r.tolerance:>9.0e}  {verdict}"
        )
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"ctrlgan export: {len(failed)} check(s) over the limit", file=sys.stderr)
        return 1
    return 0


def cmd_directions(args: argparse.Namespace) -> int:
    import time

    from ctrlgan.artifact import Artifact
    from ctrlgan.training import directions, feature_net

    start = time.perf_counter()
    artifact = Artifact.open(args.model)
    fset, meter = feature_net.feature_sets(artifact)  # discovery and measurement readers
    if args.report:
        return _directions_report(args, artifact, meter)
    given = [flag for flag, value in (("--heatmap", args.heatmap), ("--data", args.data)) if value]
    if given:
        raise InvalidRequest("report", f"{' and '.join(given)} belong to --report")
    method = args.method or "boundary"
    names = fset.check(args.features or ",".join(fset.defaults))
    held = _name_list(args.hold, "hold") if args.hold is not None else []
    if args.samples is None:
        args.samples = 512 if method == "gradient" else 5000
    if args.samples < 20:
        raise InvalidRequest("samples", f"must be >= 20, got {args.samples}")
    z_dim = artifact.manifest.z_dim
    if not 1 <= args.k <= z_dim:
        raise InvalidRequest("k", f"must lie in 1..{z_dim} (the model's z_dim), got {args.k}")
    if args.seed < 0:
        raise InvalidRequest("seed", f"must be >= 0, got {args.seed}")
    if args.per_class and method != "gradient":
        raise InvalidRequest("per-class", "per-class tables come from --method gradient only")
    for value, field in ((args.step_size, "step-size"), (args.lam, "lambda")):
        if not math.isfinite(value):
            raise InvalidRequest(field, f"must be finite, got {value!r}")
    if len(set(held)) != len(held):
        raise InvalidRequest("hold", f"names repeat: {', '.join(held)}")
    if method != "closed-form":
        missing = [h for h in held if h not in names]
        if missing:
            raise InvalidRequest(
                "hold", f"{', '.join(missing)}: hold only features that are also in --features"
            )
        if held and len(held) == len(names):
            raise InvalidRequest("hold", "holds every direction: nothing is left to condition")
    generator = artifact.build_generator()
    measure = meter.fn(names)
    if method == "boundary":
        found = directions.boundary_directions(
            generator, fset.fn(names), n=args.samples, seed=args.seed
        )
    elif method == "gradient":
        # every non-circular feature goes in; the others than the target are held fixed
        steady = [n for n in fset.names if n not in fset.circular or n in names]
        found = directions.gradient_directions(
            generator,
            fset.fn(steady, keep_grad=True),
            names,
            n=args.samples,
            steps=args.grad_steps,
            step_size=args.step_size,
            lam=args.lam,
            seed=args.seed,
            per_class=args.per_class,
        )
    else:
        found = directions.closed_form_directions(generator, args.k)
    n_effect = min(args.samples, 1000)
    before = None
    if held:
        _, before = directions.effect_matrix(
            generator, found.table, measure, n=n_effect, seed=args.seed + 1
        )
        found = directions.hold_fixed(found, held)
    columns, effect = directions.effect_matrix(
        generator, found.table, measure, n=n_effect, seed=args.seed + 1
    )
    monotonic = directions.monotonic_share(
        generator, found.names, found.table, measure, n=200, seed=args.seed + 2
    )
    info = {
        "method": found.method,
        "command": shlex.join(["ctrlgan", *args.argv]),
        "samples": args.samples,
        "seed": args.seed,
        "feature_source": fset.source,
        "measured_by": meter.source,
        "features": list(columns),
        "effect": [[round(float(v), 6) for v in row] for row in effect],
        "validation_accuracy": found.accuracy,
        "monotonic_share": monotonic,
    }
    if held:
        info["held"] = held
        info["effect_before_hold"] = [[round(float(v), 6) for v in row] for row in before]
    if found.eigenvalues:
        info["eigenvalues"] = [round(v, 6) for v in found.eigenvalues]
    if found.method == "gradient":
        info |= {
            "steps": args.grad_steps,
            "step_size": args.step_size,
            "lambda": args.lam,
            "per_class": args.per_class,
        }
    written = directions.write_directions(
        artifact.path, found.names, found.table, info=info, effects=effect
    )
    seconds = time.perf_counter() - start
    print(f"features: found with {fset.source}, measured with {meter.source}")
    if held:
        print(f"before holding {', '.join(held)} fixed:")
        _print_effects(found.names, columns, before)
        print(f"after (conditional manipulation: projected off {', '.join(held)}):")
    _print_effects(found.names, columns, effect, found.accuracy, monotonic)
    print(
        "d FEATURE: mean change per unit step (alpha +1); monotonic: share of 200 samples whose "
        "feature rises over alpha -3..3"
    )
    print(
        f"wrote {len(found.names)} {found.method} direction(s) to {written.path} ({seconds:.1f} s)"
    )
    return 0


def _name_list(text: str, field: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise InvalidRequest(field, f"expected comma-separated names, got {text!r}")
    return names


def _print_effects(names, columns, effect, accuracy=None, monotonic=None) -> None:
    accuracy, monotonic = accuracy or {}, monotonic or {}
    header = f"{'direction':<12}{'val acc':>9}{'monotonic':>11}"
    print(header + "".join(f"{'d ' + c:>13}" for c in columns))
    for k, name in enumerate(names):
        acc, mono = accuracy.get(name), monotonic.get(name)
        print(
            f"{name:<12}{'-' if acc is None else f'{acc:.3f}':>9}"
            f"{'-' if mono is None else f'{mono:.1%}':>11}"
            + "".join(f"{float(v):>13.4f}" for v in effect[k])
        )


def _directions_report(args: argparse.Namespace, artifact, fset) -> int:
    """--report: the effect matrix of the model's table and the data's feature correlations;
    read-only (the artifact is not touched)."""
    import torch

    from ctrlgan.training import directions, feature_net

    ignored = [
        flag
        for flag, value in (("--method", args.method), ("--hold", args.hold))
        if value is not None
    ] + (["--per-class"] if args.per_class else [])
    if ignored:
        raise InvalidRequest(
            "report",
            f"{', '.join(ignored)}: options for finding directions; --report only measures",
        )
    names = fset.check(args.features or ",".join(fset.names))
    samples = 1000 if args.samples is None else args.samples
    if samples < 20:
        raise InvalidRequest("samples", f"must be >= 20, got {samples}")
    if args.seed < 0:
        raise InvalidRequest("seed", f"must be >= 0, got {args.seed}")
    heatmap = None if args.heatmap is None else Path(args.heatmap)
    if heatmap is not None and (heatmap.suffix.lower() != ".png" or not heatmap.parent.is_dir()):
        raise InvalidRequest(
            "heatmap", f"{str(heatmap)!r} must be a .png file in an existing directory"
        )
    if heatmap is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidRequest("heatmap", "needs matplotlib: pip install matplotlib") from None
    dataset = _report_data(artifact, args.data)
    dir_names, table = directions.load_table(artifact)
    generator = artifact.build_generator()
    measure = fset.fn(names)
    columns, effect = directions.effect_matrix(
        generator, table, measure, n=samples, seed=args.seed + 1
    )
    kind = "per-class table, averaged over classes" if table.ndim == 3 else "global table"
    print(f"features: {fset.source}")
    print(f"effect matrix: mean feature change per unit step ({kind}, {samples} samples)")
    print(f"{'direction':<12}" + "".join(f"{c:>13}" for c in columns))
    for k, name in enumerate(dir_names):
        print(f"{name:<12}" + "".join(f"{float(v):>13.4f}" for v in effect[k]))
    correlation = scale = None
    if dataset is None:
        print("feature correlation: skipped (give --data, e.g. --data digits)")
    elif dataset.factors is not None and fset.names == feature_net.NAMES:
        # shapes with their ground truth: correlate the true factors, not a reading of them
        true = dict(zip(dataset.factor_names, dataset.factors.T.double(), strict=True))
        values = torch.stack([true[c] for c in columns])
        correlation, scale = torch.corrcoef(values).float(), values.std(dim=1).float()
        print(f"true factor correlation on {dataset.name} ({len(dataset)} images)")
        _print_correlation(columns, correlation)
    else:
        _, correlation = directions.feature_correlation(dataset.images, measure, dataset.labels)
        values = measure(dataset.images, labels=dataset.labels).values()
        scale = torch.stack([v.std() for v in values])
        print(f"feature correlation on {dataset.name} ({len(dataset)} images)")
        _print_correlation(columns, correlation)
    if heatmap is not None:
        method = artifact.manifest.provenance.get("directions", {}).get("method", "?")
        directions.write_heatmap(
            heatmap,
            dir_names,
            columns,
            effect,
            correlation,
            scale,
            title=f"{artifact.path.name}: {method} directions",
        )
        print(f"wrote {heatmap}")
    return 0


def _print_correlation(columns, correlation) -> None:
    print(f"{'feature':<12}" + "".join(f"{c:>13}" for c in columns))
    for a, name in enumerate(columns):
        print(f"{name:<12}" + "".join(f"{float(v):>13.3f}" for v in correlation[a]))


def _report_data(artifact, spec):
    """The data set the report correlates features over: --data, else the model's own when it
    can be rebuilt offline (digits; shapes from the provenance's seed and correlations)."""
    from ctrlgan.training.data import load_dataset

    _, h, _ = artifact.manifest.image_shape
    if spec is not None:
        dataset = load_dataset(spec, size=h, n=5000)
        if dataset.classes != artifact.manifest.classes:
            raise InvalidRequest(
                "data",
                f"{dataset.name!r} has classes {dataset.classes}; the model's are "
                f"{artifact.manifest.classes}",
            )
        if list(dataset.image_shape) != list(artifact.manifest.image_shape):
            raise InvalidRequest(
                "data",
                f"{dataset.name!r} images are {list(dataset.image_shape)}; the "
                f"model's are {artifact.manifest.image_shape}",
            )
        return dataset
    provenance = artifact.manifest.provenance
    config = provenance.get("config", {})
    if provenance.get("dataset") == "digits":
        return load_dataset("digits", size=h)
    if provenance.get("dataset") == "shapes":
        correlate = [tuple(c) for c in config.get("correlate", [])]
        return load_dataset(
            "shapes", size=h, n=5000, seed=config.get("seed", 0), correlate=correlate
        )
    return None


def _alphas(text: str) -> list[float]:
    import math

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise InvalidRequest(
            "alphas", f"expected finite numbers like -3,-1.5,0,1.5,3, got {text!r}"
        )
    return values


def cmd_traverse(args: argparse.Namespace) -> int:
    import numpy as np

    import ctrlgan

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise InvalidRequest("output", f"must be a .png file, got {str(out)!r}")
    alphas = _alphas(args.alphas)
    g = ctrlgan.load(args.model, backend=args.backend)
    classes = parse_class_spec(args.cls, g.classes)
    if len(classes) != 1:
        raise InvalidRequest("class", f"give one class, got {args.cls!r}")
    names = args.feature or list(g.features)
    if not names:
        raise InvalidRequest("feature", "this model has no direction table")
    for name in names:
        if name not in g.features:
            known = ", ".join(g.features) or "none: this model has no direction table"
            raise InvalidRequest("feature", f"unknown feature {name!r}; known: {known}")
    strips = [g.traverse(args.seed, classes[0], name, alphas) for name in names]
    ctrlgan.save_grid(np.concatenate(strips), out, nrow=len(alphas), scale=args.scale)
    print(
        f"wrote {out} (class {g.classes[classes[0]]}, seed {args.seed}; one row per feature: "
        f"{', '.join(names)}; alphas {', '.join(f'{a:g}' for a in alphas)})"
    )
    return 0


def _seed_class(text: str, field: str) -> tuple[int, str]:
    seed, sep, cls = text.partition(":")
    try:
        value = int(seed)
    except ValueError:
        value = None
    if not sep or value is None or not cls:
        raise InvalidRequest(field, f"expected SEED:CLASS (e.g. 5:3), got {text!r}")
    return value, cls


# --grid: one row per mode, (label, method, vary)
GRID_ROWS = (
    ("lerp z (class fixed)", "lerp", "noise"),
    ("slerp z (class fixed)", "slerp", "noise"),
    ("class mix (z fixed)", "slerp", "class"),
    ("slerp z + class mix", "slerp", "both"),
)


def cmd_interpolate(args: argparse.Namespace) -> int:
    import numpy as np

    import ctrlgan

    # --method and --vary default to SUPPRESS, so absent means "not given"
    method, vary = getattr(args, "method", None), getattr(args, "vary", None)
    if args.grid and (method is not None or vary is not None):
        given = "--method" if method is not None else "--vary"
        raise InvalidRequest("grid", f"--grid draws every mode, one per row; drop {given}")
    g = ctrlgan.load(args.model, backend=args.backend)
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise InvalidRequest("output", f"must be a .png file, got {str(out)!r}")
    ends = []
    for text, field in ((args.start, "from"), (args.end, "to")):
        seed, cls = _seed_class(text, field)
        index = int(cls) if cls.isdigit() and cls not in g.classes else cls
        ends.append((seed, index))
    if args.grid:
        strips = [
            g.interpolate(ends[0], ends[1], steps=args.steps, method=m, vary=v)
            for _, m, v in GRID_ROWS
        ]
        ctrlgan.save_grid(np.concatenate(strips), out, nrow=args.steps, scale=args.scale)
        rows = "; ".join(label for label, _, _ in GRID_ROWS)
        print(
            f"wrote {out} ({len(GRID_ROWS)} rows x {args.steps} steps, {args.start} -> "
            f"{args.end}; rows: {rows})"
        )
        return 0
    method, vary = method or "slerp", vary or "both"
    x = g.interpolate(ends[0], ends[1], steps=args.steps, method=method, vary=vary)
    ctrlgan.save_grid(x, out, nrow=args.steps, scale=args.scale)
    how = "class mix, z fixed" if vary == "class" else f"{method}, vary {vary}"
    print(f"wrote {out} ({args.steps} steps, {how}, {args.start} -> {args.end})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ctrlgan.artifact import Artifact
    from ctrlgan.runtime import bench

    artifact = Artifact.open(args.model)
    for path, suffix in ((args.json, ".json"), (args.plot, ".png")):
        if path is not None and (path.suffix.lower() != suffix or not path.parent.is_dir()):
            raise InvalidRequest(
                "json" if suffix == ".json" else "plot",
                f"{str(path)!r} must be a {suffix} file in an existing directory",
            )
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidRequest("plot", "needs matplotlib: pip install 'ctrlgan[plot]'") from None
    bench.check(list(args.backends), list(args.batch_sizes), args.rounds, args.warmup)
    total = len(args.batch_sizes) * (args.rounds + args.warmup)
    with tqdm(total=total, desc="bench", unit="round", disable=args.quiet, leave=False) as bar:
        results, notes = bench.run(
            artifact,
            list(args.backends),
            list(args.batch_sizes),
            rounds=args.rounds,
            warmup=args.warmup,
            compile_=not args.no_compile,
            progress=lambda *_: bar.update(1),
        )
    print(bench.table(results))
    for note in notes:
        print(f"note: {note}")
    if args.json is not None:
        bench.write_json(args.json, results, notes, str(artifact.path))
        print(f"wrote {args.json}")
    if args.plot is not None:
        bench.plot(args.plot, results)
        print(f"wrote {args.plot}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if not names:
        raise argparse.ArgumentTypeError("give one or more comma-separated names")
    return names


def _factor_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated factor names, got {text!r}")
    return names


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated batch sizes, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


# Parser ----------------------------------------------------------------------------------


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default="digits", help="bundled model name or artifact directory"
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    from ctrlgan.runtime.jobs import FORMATS
    from ctrlgan.training.train import TrainConfig

    d = TrainConfig()
    parser = _Parser(prog="ctrlgan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ctrlgan {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a conditional GAN and write a model artifact",
        description="Train a conditional GAN; writes OUT/model (the artifact), OUT/samples/*.png "
        "(rows = classes) and OUT/checkpoint.safetensors (resume with --resume).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = t.add_argument_group("data")
    data.add_argument(
        "--data",
        default=d.data,
        help="digits | shapes | an image folder (one sub-folder per class) | a .npz with "
        "images and labels | a folder of MNIST IDX files",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize images to this (16, 28, 32, 64); default: the data set's",
    )
    data.add_argument("--n-data", type=int, default=None, help="images to render (shapes only)")
    data.add_argument(
        "--correlate",
        action="append",
        default=[],
        metavar="A:B:RHO",
        help="shapes only: draw factors A and B with Pearson correlation RHO, e.g. "
        "scale:pos_y:0.8 (repeatable; factors: scale, orientation, pos_x, pos_y)",
    )
    net = t.add_argument_group("networks")
    net.add_argument("--z-dim", type=int, default=d.z_dim, help="noise dimensions")
    net.add_argument(
        "--g-channels",
        type=int,
        default=d.g_channels,
        help="generator width (channels of its last hidden block)",
    )
    net.add_argument(
        "--d-channels",
        type=int,
        default=d.d_channels,
        help="discriminator width (channels of its first block)",
    )
    net.add_argument(
        "--embedding",
        choices=["onehot", "learned"],
        default=d.embedding,
        help="class embedding fed to the generator",
    )
    net.add_argument(
        "--embed-dim", type=int, default=d.embed_dim, help="width of a learned embedding"
    )
    net.add_argument(
        "--discriminator",
        choices=["concat", "projection"],
        default=d.discriminator,
        help="concat: one-hot class channels appended to the image; "
        "projection: psi(phi(x)) + embed(y).phi(x)",
    )
    opt = t.add_argument_group("optimisation")
    opt.add_argument(
        "--loss",
        choices=["bce", "wgan-gp"],
        default=d.loss,
        help="BCE, or W-loss with gradient penalty",
    )
    opt.add_argument("--steps", type=int, default=d.steps, help="generator steps")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch")
    opt.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    opt.add_argument("--beta1", type=float, default=d.beta1, help="Adam beta1")
    opt.add_argument("--beta2", type=float, default=d.beta2, help="Adam beta2")
    opt.add_argument(
        "--d-steps",
        type=int,
        default=d.d_steps,
        help="discriminator steps per generator step (5 is usual for wgan-gp)",
    )
    opt.add_argument(
        "--gp-weight", type=float, default=d.gp_weight, help="gradient penalty weight (wgan-gp)"
    )
    opt.add_argument(
        "--seed", type=int, default=d.seed, help="seed of initial weights, batches and noise"
    )
    info = t.add_argument_group("disentanglement (InfoGAN: L = L_gan + lambda * reg_d)")
    info.add_argument(
        "--info-codes",
        type=int,
        default=d.info_codes,
        help="z dims 0..N-1 become continuous codes that a Q head on D must recover (0: off)",
    )
    info.add_argument(
        "--info-categories",
        type=int,
        default=d.info_categories,
        help="K values of one categorical code in the z dim after the continuous ones (0: none)",
    )
    info.add_argument(
        "--info-lambda",
        type=float,
        default=d.info_lambda,
        help="weight lambda of reg_d (InfoGAN or supervised codes)",
    )
    info.add_argument(
        "--supervised-codes",
        type=_factor_list,
        default=[],
        metavar="F1,F2",
        help="shapes only: z dims 0..m-1 carry these true factors (scale, pos_x, pos_y), "
        "which a factor regressor must read back from G(z); excludes --info-codes",
    )
    run = t.add_argument_group("run")
    run.add_argument("--out", default=d.out, help="run directory")
    run.add_argument(
        "--feature-steps",
        type=int,
        default=d.feature_steps,
        help="steps fitting the feature network that the artifact ships: `ctrlgan directions` "
        "finds directions with it (image moments; shapes: the true factors); 0: none",
    )
    run.add_argument(
        "--sample-every", type=int, default=d.sample_every, help="write a sample grid every N steps"
    )
    run.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="checkpoint every N steps"
    )
    run.add_argument(
        "--eval-per-class",
        type=int,
        default=d.eval_per_class,
        help="samples per class for the final metrics (0: skip)",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.safetensors"
    )
    run.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "sample",
        help="write a class-by-seed grid of samples",
        description="Sample images and write a PNG grid: one row per class, "
        "the same seeds in every row.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_argument(s)
    s.add_argument(
        "--class", dest="cls", default="all", help="classes: all, 3, 0-9, 1,4,7 or class names"
    )
    s.add_argument("--n", type=int, default=8, help="seeds (images) per class")
    s.add_argument("--seed", type=int, default=0, help="first seed")
    s.add_argument("--truncation", type=float, default=None, help="truncate noise to |z| <= T")
    s.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="NAME=ALPHA",
        help="move along a direction (repeatable)",
    )
    s.add_argument("--scale", type=int, default=4, help="enlarge pixels by this factor")
    s.add_argument("--backend", default="auto", help="runtime backend")
    s.add_argument("-o", "--output", default="samples.png", help="PNG file to write")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser(
        "export",
        help="write the model's ONNX graphs into its artifact",
        description="Write generator.onnx (the ONNX contract: z_a, z_b, t, class_a, class_b, s, "
        "alpha -> image, the latent prologue as the function ctrlgan.LatentPrep), "
        "generator.fp16.onnx and generator.body.onnx (latent -> image) into the artifact, "
        "with their checksums and signatures in the manifest. The artifact is replaced "
        "atomically; on any error it is left as it was.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_argument(e)
    e.add_argument(
        "--check",
        action="store_true",
        help="then compare every graph with the torch model (onnxruntime, the ONNX reference "
        "evaluator, the inlined graph) at batches 1, 7 and 256; exit 1 if one is off",
    )
    e.add_argument("--check-only", action="store_true", help="check the graphs already exported")
    e.add_argument(
        "--reference-batches",
        type=_batches,
        default=None,
        metavar="B,B",
        help="batches for the (slow) ONNX reference evaluator (default: all checked batches)",
    )
    e.set_defaults(func=cmd_export)

    j = sub.add_parser(
        "generate",
        help="write many seeded images to a directory as shards (resumable)",
        description="A batch job: PER_CLASS images of each class in shards of SHARD_SIZE "
        "(npz: images uint8 NHWC, labels, seeds; png: one folder of PNGs and labels.csv per "
        "shard) plus OUT/job.json. Image i of the class at position p in --classes gets seed "
        "SEED + p * PER_CLASS + i. Rerun the same command to continue an interrupted job; the "
        "result is byte-identical to an uninterrupted run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_argument(j)
    j.add_argument("--classes", default="all", help="classes: all, 3, 0-9, 1,4,7 or class names")
    j.add_argument("--per-class", type=int, required=True, help="images per class")
    j.add_argument("--out", required=True, help="job directory (created if missing)")
    j.add_argument("--seed", type=int, default=0, help="first seed")
    j.add_argument("--truncation", type=float, default=None, help="truncate noise to |z| <= T")
    j.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="NAME=ALPHA",
        help="move every image along a direction (repeatable)",
    )
    j.add_argument("--format", choices=FORMATS, default="npz", help="shard format")
    j.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    j.add_argument(
        "--batch-size", type=int, default=1024, help="images per backend call (output unchanged)"
    )
    j.add_argument("--backend", default="auto", help="runtime backend")
    j.add_argument("--quiet", action="store_true", help="no progress bar")
    j.set_defaults(func=cmd_generate)

    r = sub.add_parser(
        "directions",
        help="find directions in z-space that control features and write them into the model",
        description="Find one direction per feature (boundary: the unit normal of a logistic "
        "regression on z labelled by the feature above/below its class median) or the top-K "
        "unsupervised ones (closed-form: eigenvectors of W_z^T W_z of the first layer, named "
        "factor_0..; gradient: the source's classifier gradients, averaged unit displacements of "
        "gradient ascent on z against the frozen generator and the measured features), measure "
        "their effect on the features, and replace the model's direction table with them (ONNX "
        "graphs are re-exported; the artifact is replaced atomically). With --report, change "
        "nothing: print the effect matrix of the model's table and the data's feature "
        "correlations, and optionally draw both as a heatmap.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_argument(r)
    r.add_argument(
        "--method",
        choices=["boundary", "closed-form", "gradient"],
        default=None,
        help="how to find them (default: boundary)",
    )
    r.add_argument(
        "--features",
        default=None,
        help="features to find or measure. Image moments: thickness, slant, size, pos_x, pos_y "
        "(default thickness,slant,size); a shapes model that ships a feature network: its true "
        "factors scale, orientation, pos_x, pos_y (default scale,pos_x,pos_y). --report: all",
    )
    r.add_argument(
        "--hold",
        default=None,
        metavar="F1,F2",
        help="conditional manipulation: project every other direction off these directions "
        "(n' = n - C^T (C C^T)^-1 C n) so that moving along it keeps these features fixed; "
        "prints the effect matrix before and after",
    )
    r.add_argument("--k", type=int, default=5, help="directions to keep (closed-form)")
    r.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples (default: 5000 boundary fit, 512 gradient ascent, 1000 report)",
    )
    r.add_argument("--seed", type=int, default=0, help="seed of the sampled noise")
    grad = r.add_argument_group("gradient method")
    grad.add_argument(
        "--per-class", action="store_true", help="one direction per class: a [C, K, Z] table"
    )
    grad.add_argument("--grad-steps", type=int, default=20, help="ascent steps per sample")
    grad.add_argument("--step-size", type=float, default=0.1, help="z distance per ascent step")
    grad.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=1.0,
        help="weight of the penalty on the other features' change",
    )
    rep = r.add_argument_group("report")
    rep.add_argument(
        "--report", action="store_true", help="only report on the model's table (read-only)"
    )
    rep.add_argument("--heatmap", default=None, metavar="PNG", help="write the report's heatmap")
    rep.add_argument(
        "--data",
        default=None,
        help="data set for the feature correlations (default: the model's when it can be "
        "drawn again offline: digits, or shapes from the provenance's seed and correlations)",
    )
    r.set_defaults(func=cmd_directions)

    v = sub.add_parser(
        "traverse",
        help="write strips stepping one seed along feature directions",
        description="One (seed, class) stepped along each feature's direction, one image per "
        "alpha; one row per --feature (default: every direction of the model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_argument(v)
    v.add_argument("--class", dest="cls", default="0", help="one class: index or name")
    v.add_argument(
        "--feature", action="append", default=[], help="direction name (repeatable: one row each)"
    )
    v.add_argument("--seed", type=int, default=0, help="noise seed")
    v.add_argument(
        "--alphas", default="-3,-1.5,0,1.5,3", help="comma-separated steps along the direction"
    )
    # so that `--alphas -3,-1.5,0` is a value, not an unknown option (argparse only takes
    # single negative numbers as values otherwise)
    number = r"(?:[0-9.]+(?:[eE][-+]?[0-9]+)?|inf|nan)"
    v._negative_number_matcher = re.compile(rf"^-{number}(,[-+]?{number}?)*$")
    v.add_argument("--scale", type=int, default=4, help="enlarge pixels by this factor")
    v.add_argument("--backend", default="auto", help="runtime backend")
    v.add_argument("-o", "--output", default="traverse.png", help="PNG file to write")
    v.set_defaults(func=cmd_traverse)

    p = sub.add_parser(
        "interpolate",
        help="write a strip (or a grid of modes) interpolating between two (seed, class) points",
        description="Interpolate from one (seed, class) point to another and write the strip as "
        "a PNG: the noise (slerp or lerp), the class embedding (a linear soft one-hot mix), or "
        "both at once. --grid writes one row per mode: lerp z (class fixed), slerp z (class "
        "fixed), class mix (z fixed), slerp z + class mix.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_argument(p)
    p.add_argument(
        "--from", dest="start", default="5:3", metavar="SEED:CLASS", help="start: seed and class"
    )
    p.add_argument(
        "--to", dest="end", default="9:7", metavar="SEED:CLASS", help="end: seed and class"
    )
    p.add_argument("--steps", type=int, default=8, help="images per strip (>= 2)")
    # SUPPRESS: cmd_interpolate tells "not given" from the default, which --grid needs
    p.add_argument(
        "--method",
        default=argparse.SUPPRESS,
        help="noise interpolation: slerp or lerp (default: slerp; not with --grid)",
    )
    p.add_argument(
        "--vary",
        default=argparse.SUPPRESS,
        help="what moves: both (noise and class), noise (class stays the start's) or class "
        "(noise stays the start's) (default: both; not with --grid)",
    )
    p.add_argument(
        "--grid",
        action="store_true",
        help="write 4 rows, one per mode: lerp z, slerp z, class mix, slerp z + class mix",
    )
    p.add_argument("--scale", type=int, default=4, help="enlarge pixels by this factor")
    p.add_argument("--backend", default="auto", help="runtime backend")
    p.add_argument("-o", "--output", default="interpolation.png", help="PNG file to write")
    p.set_defaults(func=cmd_interpolate)

    b = sub.add_parser(
        "bench",
        help="latency and throughput per backend and batch size",
        description="Time Generator.sample per backend and batch size side by side in one run, "
        "with the raw backend calls (onnxruntime session.run, the eager torch module) and "
        "torch.compile where it works: p50/p90/p99 latency and images/s, as a table, and "
        "optionally JSON and a PNG plot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_argument(b)
    b.add_argument(
        "--backends",
        type=_names,
        default=("torch", "onnxruntime") + (("triton",) if _cuda() else ()),
        metavar="A,B",
        help="backends to time (unusable ones are skipped with a note)",
    )
    b.add_argument(
        "--batch-sizes", type=_batches, default=(1, 8, 64, 256), metavar="B,B", help="batch sizes"
    )
    b.add_argument("--rounds", type=int, default=100, help="timed rounds per batch size")
    b.add_argument("--warmup", type=int, default=10, help="untimed rounds first")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    b.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    b.add_argument("--plot", type=Path, default=None, help="also write a PNG plot (matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="show a model artifact's manifest (verifies checksums)")
    _model_argument(i)
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except CtrlganError as e:
        print(f"ctrlgan {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an unwritable output path
        print(f"ctrlgan {args.cmd}: error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctrlgan {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
