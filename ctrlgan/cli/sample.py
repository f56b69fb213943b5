"""`ctrlgan sample`, `interpolate` and `traverse`: images from a model, written as PNG grids.

Each checks its whole command line (the output path included) before it loads the model, so a
mistake costs nothing and leaves nothing on disk.
"""

from __future__ import annotations

import argparse

from ctrlgan.cli import options
from ctrlgan.errors import InvalidRequest

# --grid of interpolate: one row per mode, (label, method, vary)
GRID_ROWS = (
    ("lerp z (class fixed)", "lerp", "noise"),
    ("slerp z (class fixed)", "slerp", "noise"),
    ("class mix (z fixed)", "slerp", "class"),
    ("slerp z + class mix", "slerp", "both"),
)


def add_parsers(sub) -> None:
    s = options.command(
        sub,
        "sample",
        help="write a class-by-seed grid of samples",
        description="Sample images and write a PNG grid: one row per class, the same seeds "
        "in every row. With --z, the rows of a saved noise array [B, Z] replace the seeds "
        "(e.g. numpy.save of ctrlgan.noise(seeds, z_dim), edited): the same B noise rows in "
        "every class row.",
    )
    options.add_model(s)
    s.add_argument(
        "--class", dest="cls", default="all", help="classes: all, 3, 0-9, 1,4,7 or class names"
    )
    # SUPPRESS: run_sample tells "not given" from the default, which --z needs
    s.add_argument(
        "--n", type=int, default=argparse.SUPPRESS, help="seeds (images) per class (default: 8)"
    )
    s.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="first seed (default: 0)")
    s.add_argument("--truncation", type=float, default=None, help="truncate noise to |z| <= T")
    s.add_argument(
        "--z",
        metavar="FILE.npy",
        default=None,
        help="render saved noise rows: a float .npy array [B, Z] (not with --n, --seed or "
        "--truncation)",
    )
    options.add_steer(s)
    options.add_scale(s)
    options.add_backend(s)
    options.add_output(s, "samples.png")
    s.set_defaults(func=run_sample)

    p = options.command(
        sub,
        "interpolate",
        help="write a strip (or a grid of modes) interpolating between two (seed, class) points",
        description="Interpolate from one (seed, class) point to another and write the strip as "
        "a PNG: the noise (slerp or lerp), the class embedding (a linear soft one-hot mix), or "
        "both at once. --grid writes one row per mode: lerp z (class fixed), slerp z (class "
        "fixed), class mix (z fixed), slerp z + class mix.",
    )
    options.add_model(p)
    p.add_argument(
        "--from", dest="start", default="5:3", metavar="SEED:CLASS", help="start: seed and class"
    )
    p.add_argument(
        "--to", dest="end", default="9:7", metavar="SEED:CLASS", help="end: seed and class"
    )
    p.add_argument("--steps", type=int, default=8, help="images per strip (>= 2)")
    # SUPPRESS: run_interpolate tells "not given" from the default, which --grid needs
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
    options.add_scale(p)
    options.add_backend(p)
    options.add_output(p, "interpolation.png")
    p.set_defaults(func=run_interpolate)

    v = options.command(
        sub,
        "traverse",
        help="write strips stepping one seed along feature directions",
        description="One (seed, class) stepped along each feature's direction, one image per "
        "alpha; one row per --feature (default: every direction of the model).",
    )
    options.add_model(v)
    v.add_argument("--class", dest="cls", default="0", help="one class: index or name")
    v.add_argument(
        "--feature", action="append", default=[], help="direction name (repeatable: one row each)"
    )
    v.add_argument("--seed", type=int, default=0, help="noise seed")
    v.add_argument(
        "--alphas", default="-3,-1.5,0,1.5,3", help="comma-separated steps along the direction"
    )
    options.add_scale(v)
    options.add_backend(v)
    options.add_output(v, "traverse.png")
    v.set_defaults(func=run_traverse)


def run_sample(args: argparse.Namespace) -> int:
    import ctrlgan
    from ctrlgan import validate

    out = options.output_file(args.output)
    options.positive(args.scale, "scale")
    if args.z is not None:
        for name in ("n", "seed"):
            if hasattr(args, name):
                raise InvalidRequest(
                    "z", f"--z gives the noise that --{name} would draw from seeds: drop --{name}"
                )
        if args.truncation is not None:
            raise InvalidRequest(
                "z",
                "--truncation redraws noise from seeds, --z noise is used as it is: drop "
                "--truncation (truncate with ctrlgan.noise(seeds, z_dim, truncation=T) before "
                "saving)",
            )
    n = validate.integer(getattr(args, "n", 8), "n", lo=1)
    seed = getattr(args, "seed", 0)
    truncation = _truncation(args.truncation)
    steer = options.steer(args.steer)
    raw = None if args.z is None else _load_z(args.z)
    g = ctrlgan.load(args.model, backend=args.backend)
    classes = options.class_spec(args.cls, g.classes)
    if raw is not None:
        return _sample_z(g, args, out, raw, classes, steer)
    if n * len(classes) > g.max_batch:
        per = f"{n} x {len(classes)} classes" if len(classes) > 1 else str(n)
        raise InvalidRequest("n", f"{per} images exceed the batch limit {g.max_batch}")
    if not 0 <= seed < 2**64:
        raise InvalidRequest("seed", f"must be in [0, 2**64), got {seed}")
    if seed + n > 2**64:
        raise InvalidRequest(
            "seed", f"seeds {seed}..{seed}+{n - 1} run past 2**64 - 1: lower --seed"
        )
    # A class-by-seed grid: one row per class, the same n seeds in every row.
    seeds = [seed + i for i in range(n)] * len(classes)
    rows = [c for c in classes for _ in range(n)]
    x = g.sample(rows, seeds, steer=steer, truncation=truncation)
    nrow = n if len(classes) > 1 else min(n, 8)
    ctrlgan.save_grid(x, out, nrow=nrow, scale=args.scale)
    names = ", ".join(g.classes[c] for c in classes)
    print(f"wrote {out} ({len(classes)} class(es) [{names}] x {n} seed(s) from {seed})")
    return 0


def _load_z(path: str):
    """--z FILE: one array from a .npy file, never unpickling anything, memory-mapped so that
    its shape is checked (request.parse_z) before its values are read."""
    import numpy as np

    shown = _shown(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise InvalidRequest("z", f"no such file: {shown}") from None
    except IsADirectoryError:
        raise InvalidRequest("z", f"{shown} is a directory, not a .npy file") from None
    except OSError as e:
        raise InvalidRequest("z", f"cannot read {shown} ({e.strerror or e})") from None
    if magic[:4] == b"PK\x03\x04":
        raise InvalidRequest(
            "z", f"{shown} is an .npz archive; --z takes one array [B, Z] saved by numpy.save"
        )
    if magic != b"\x93NUMPY":
        raise InvalidRequest(
            "z", f"{shown} is not a .npy file (--z takes an array [B, Z] saved by numpy.save)"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "object" in str(e).lower():
            reason = "it holds Python objects (pickled), which --z never loads"
        else:
            reason = f"a broken .npy file ({str(e).splitlines()[0][:60] if str(e) else 'bad'})"
        raise InvalidRequest("z", f"{shown}: {reason}") from None
    except (OSError, EOFError) as e:
        raise InvalidRequest("z", f"{shown}: cannot be read ({type(e).__name__})") from None


def _shown(path: str) -> str:
    """A path for a message: its end (the file name) if it is long."""
    return repr(path if len(path) <= 60 else "..." + path[-57:])


def _sample_z(g, args, out, raw, classes: list[int], steer) -> int:
    """The --z grid: one row per class, the file's noise rows in every row."""
    import numpy as np

    import ctrlgan
    from ctrlgan.runtime import request

    shown = _shown(args.z)
    try:
        z = request.parse_z(raw, g.z_dim, limit=max(1, g.max_batch // len(classes)))
    except InvalidRequest as e:
        raise InvalidRequest("z", f"{shown}: {e.message}") from None
    b = len(z)
    rows = [c for c in classes for _ in range(b)]
    x = g.sample(rows, z=np.tile(z, (len(classes), 1)), steer=steer)
    nrow = b if len(classes) > 1 else min(b, 8)
    ctrlgan.save_grid(x, out, nrow=nrow, scale=args.scale)
    names = ", ".join(g.classes[c] for c in classes)
    print(f"wrote {out} ({len(classes)} class(es) [{names}] x {b} noise row(s) from {args.z})")
    return 0


def _truncation(value: float | None) -> float | None:
    from ctrlgan.runtime.request import parse_truncation

    return parse_truncation(value)


def run_interpolate(args: argparse.Namespace) -> int:
    import numpy as np

    import ctrlgan

    # --method and --vary default to SUPPRESS, so absent means "not given"
    method, vary = getattr(args, "method", None), getattr(args, "vary", None)
    if args.grid and (method is not None or vary is not None):
        given = "--method" if method is not None else "--vary"
        raise InvalidRequest("grid", f"--grid draws every mode, one per row; drop {given}")
    out = options.output_file(args.output)
    options.positive(args.scale, "scale")
    points = [options.seed_class(args.start, "from"), options.seed_class(args.end, "to")]
    g = ctrlgan.load(args.model, backend=args.backend)
    ends = []
    for (seed, cls), field in zip(points, ("from", "to"), strict=True):
        chosen = options.class_spec(cls, g.classes, field=field)
        if len(chosen) != 1:
            raise InvalidRequest(field, f"give one class, got {cls!r}")
        ends.append((seed, chosen[0]))
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


def run_traverse(args: argparse.Namespace) -> int:
    import numpy as np

    import ctrlgan

    out = options.output_file(args.output)
    options.positive(args.scale, "scale")
    alphas = options.reals(args.alphas, "alphas")
    if not 0 <= args.seed < 2**64:
        raise InvalidRequest("seed", f"must be in [0, 2**64), got {args.seed}")
    g = ctrlgan.load(args.model, backend=args.backend)
    classes = options.class_spec(args.cls, g.classes)
    if len(classes) != 1:
        raise InvalidRequest("class", f"give one class, got {args.cls!r}")
    names = args.feature or list(g.features)
    if not names:
        raise InvalidRequest("feature", "this model has no direction table")
    for name in names:
        if name not in g.features:
            known = ", ".join(g.features) or "none: this model has no direction table"
            raise InvalidRequest("feature", f"unknown feature {name!r}; known: {known}")
    if len(names) * len(alphas) > g.max_batch:
        raise InvalidRequest(
            "alphas", f"{len(names)} x {len(alphas)} images exceed the batch limit {g.max_batch}"
        )
    strips = [g.traverse(args.seed, classes[0], name, alphas) for name in names]
    ctrlgan.save_grid(np.concatenate(strips), out, nrow=len(alphas), scale=args.scale)
    print(
        f"wrote {out} (class {g.classes[classes[0]]}, seed {args.seed}; one row per feature: "
        f"{', '.join(names)}; alphas {', '.join(f'{a:g}' for a in alphas)})"
    )
    return 0
