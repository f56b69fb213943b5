"""`ctrlgan directions`: find directions in z-space that control features, measure them, and
write them into the model (training/directions.py); --report measures the model's table only.
"""

from __future__ import annotations

import argparse
import math
import shlex

from ctrlgan import validate
from ctrlgan.cli import options
from ctrlgan.errors import ArtifactError, InvalidRequest

MAX_SAMPLES = 1_000_000  # noise rows held in memory with their images
MAX_GRAD_STEPS = 10_000


def add_parsers(sub) -> None:
    r = options.command(
        sub,
        "directions",
        help="find directions in z-space that control features and write them into the model",
        description="Find one direction per feature (boundary: the unit normal of a logistic "
        "regression on z labelled by the feature above/below its class median, or with "
        "--chosen-ratio only its top and bottom fraction, as InterFaceGAN does) or the top-K "
        "unsupervised ones (closed-form: eigenvectors of W_z^T W_z of the first layer, named "
        "factor_0..; with --normalize each unit's weights scaled to unit norm first, as SeFa "
        "does; gradient: the source's classifier gradients, averaged unit displacements of "
        "gradient ascent on z against the frozen generator and the measured features), measure "
        "their effect on the features, and replace the model's direction table with them (ONNX "
        "graphs are re-exported; the artifact is replaced atomically). With --report, change "
        "nothing: print the effect matrix of the model's table and the data's feature "
        "correlations, and optionally draw both as a heatmap.",
    )
    options.add_model(r)
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
    bound = r.add_argument_group("boundary method")
    bound.add_argument(
        "--chosen-ratio",
        type=float,
        default=None,
        metavar="R",
        help="label only the top and bottom R (0 < R <= 0.5) of each class's scores and leave "
        "the middle out, InterFaceGAN's train_boundary convention (its default: 0.02; R of a "
        "class must be >= 1 sample). On the digits model the directions then agree with "
        "train_boundary's to cosine 0.90-0.94 at 5000 samples, 0.95-0.98 at 50000, about as well "
        "as train_boundary's own runs agree (docs/controllable.md). Unset: every sample, "
        "above/below its class median",
    )
    closed = r.add_argument_group("closed-form method")
    closed.add_argument(
        "--normalize",
        action="store_true",
        help="scale each first-layer unit's weights over z to unit norm before the eigen "
        "decomposition, SeFa's factorize_weight convention: the directions then equal SeFa's "
        "(top 5 on the digits model: |cosine| 1 - 2e-14; docs/controllable.md); without it they "
        "agree to |cosine| 0.97-0.997",
    )
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
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    held = options.names(args.hold, "hold") if args.hold is not None else []
    if args.samples is None:
        args.samples = 512 if method == "gradient" else 5000
    validate.integer(args.samples, "samples", 20, MAX_SAMPLES)
    validate.integer(args.grad_steps, "grad_steps", 1, MAX_GRAD_STEPS)
    z_dim = artifact.manifest.z_dim
    if not 1 <= args.k <= z_dim:
        raise InvalidRequest("k", f"must lie in 1..{z_dim} (the model's z_dim), got {args.k}")
    if args.seed < 0:
        raise InvalidRequest("seed", f"must be >= 0, got {args.seed}")
    if args.per_class and method != "gradient":
        raise InvalidRequest("per-class", "per-class tables come from --method gradient only")
    if args.chosen_ratio is not None and method != "boundary":
        raise InvalidRequest("chosen_ratio", "--chosen-ratio belongs to --method boundary")
    if args.normalize and method != "closed-form":
        raise InvalidRequest("normalize", "--normalize belongs to --method closed-form")
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
            generator,
            fset.fn(names),
            n=args.samples,
            seed=args.seed,
            chosen_ratio=args.chosen_ratio,
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
        found = directions.closed_form_directions(generator, args.k, normalize=args.normalize)
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
        **found.settings,  # boundary: chosen_ratio, labelled; closed-form: normalize
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
    ] + [
        flag
        for flag, given in (
            ("--per-class", args.per_class),
            ("--chosen-ratio", args.chosen_ratio is not None),
            ("--normalize", args.normalize),
        )
        if given
    ]
    if ignored:
        raise InvalidRequest(
            "report",
            f"{', '.join(ignored)}: options for finding directions; --report only measures",
        )
    names = fset.check(args.features or ",".join(fset.names))
    samples = 1000 if args.samples is None else args.samples
    validate.integer(samples, "samples", 20, MAX_SAMPLES)
    if args.seed < 0:
        raise InvalidRequest("seed", f"must be >= 0, got {args.seed}")
    heatmap = None if args.heatmap is None else options.output_file(args.heatmap, "heatmap")
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
        method = _mapping(artifact.manifest.provenance.get("directions")).get("method", "?")
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
    can be rebuilt offline (digits, mnist; shapes from the provenance's seed and correlations)."""
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
    config = _mapping(provenance.get("config"))
    if provenance.get("dataset") in ("digits", "mnist"):
        return load_dataset(provenance["dataset"], size=h)
    if provenance.get("dataset") == "shapes":
        try:
            correlate = [tuple(c) for c in config.get("correlate", [])]
            seed = validate.integer(config.get("seed", 0), "seed", 0, 2**63 - 1)
        except (TypeError, ValueError):  # InvalidRequest is one too
            raise ArtifactError(
                str(artifact.path / "manifest.json"),
                "provenance.config cannot rebuild the shapes data set: give --data",
            ) from None
        return load_dataset("shapes", size=h, n=5000, seed=seed, correlate=correlate)
    return None


def _mapping(value) -> dict:
    """A provenance entry that should be an object (an edited manifest may hold anything)."""
    return value if isinstance(value, dict) else {}
