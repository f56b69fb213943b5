"""`ctrlgan edit`: per-sample noise editing, the source's procedure (training/edit.py): gradient
ascent on each sample's own noise through the model's feature network, drawn as one row per
sample and one column per step; the edited noise can be saved for `ctrlgan sample --z`.

The command line (outputs included) is checked before any work; feature names once the
model's reader is known.
"""

from __future__ import annotations

import argparse
import io

from ctrlgan.cli import options
from ctrlgan.errors import InvalidRequest

MAX_SAMPLES = 1024
MAX_STEPS = 1000
MAX_IMAGES = 16_384  # samples x (steps + 1) drawn in the figure
DEFAULT_STEPS = 10  # the source's grad_steps (training/edit.py STEPS)
DEFAULT_PENALTY = 1.0  # training/edit.py PENALTY, measured (the source's: 0.1)


def add_parsers(sub) -> None:
    e = options.command(
        sub,
        "edit",
        help="edit each sample's noise by gradient ascent on its features (the source's way)",
        description="Per-sample editing, as the source course does it: freeze the generator and "
        "the model's feature network, and do gradient ascent on each sample's own noise on "
        "score = mean(increase) - mean(decrease) - penalty * ||change of the kept features||, "
        "every reading in units of its spread over the model's samples. Writes one row per "
        "sample and one column per step (0 = the original), prints the mean change of every "
        "target and kept feature, and can save the edited noise [B, Z] float32 for "
        "`ctrlgan sample --z`.",
    )
    options.add_model(e)
    e.add_argument(
        "--class", dest="cls", default="0", help="one class for all seeds, or one per seed"
    )
    e.add_argument("--seeds", default="0-7", help="noise seeds: 5, 0-7 or 1,4,9")
    e.add_argument("--increase", default=None, metavar="F1,F2", help="features to raise")
    e.add_argument("--decrease", default=None, metavar="F1,F2", help="features to lower")
    e.add_argument(
        "--keep",
        default=None,
        metavar="F1,F2",
        help="features held where they are (penalised); others are free",
    )
    e.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="ascent steps")
    e.add_argument(  # SUPPRESS: its default, 1 / steps, depends on --steps
        "--weight",
        type=float,
        default=argparse.SUPPRESS,
        help="step: noise += weight * grad (default: 1 / steps)",
    )
    e.add_argument(
        "--penalty",
        type=float,
        default=DEFAULT_PENALTY,
        help="weight of the kept features' change (the source's: 0.1)",
    )
    e.add_argument(
        "--accumulate",
        action="store_true",
        help="never zero the noise's gradient, like the source's notebook (its momentum)",
    )
    e.add_argument("--save-z", default=None, metavar="NPY", help="write the edited noise here")
    options.add_scale(e)
    options.add_output(e, "edit.png")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math

    from ctrlgan import validate

    out = options.output_file(args.output)
    save_z = None if args.save_z is None else options.output_file(args.save_z, "save-z", ".npy")
    if save_z is not None and save_z.resolve() == out.resolve():
        raise InvalidRequest("save-z", "must differ from the output")
    options.positive(args.scale, "scale")
    seeds = options.int_list(args.seeds, "seeds")
    if not 1 <= len(seeds) <= MAX_SAMPLES:
        raise InvalidRequest("seeds", f"give 1..{MAX_SAMPLES} seeds, got {len(seeds)}")
    bad = [s for s in seeds if not 0 <= s < 2**64]
    if bad:
        raise InvalidRequest("seeds", f"seed {bad[0]} out of range [0, 2**64)")
    steps = validate.integer(args.steps, "steps", 1, MAX_STEPS)
    if len(seeds) * (steps + 1) > MAX_IMAGES:
        raise InvalidRequest(
            "steps", f"{len(seeds)} seeds x {steps + 1} columns exceed {MAX_IMAGES} images"
        )
    weight = getattr(args, "weight", None)
    for value, field in ((weight, "weight"), (args.penalty, "penalty")):
        if value is not None and not math.isfinite(value):
            raise InvalidRequest(field, f"must be finite, got {value!r}")
    roles = {
        role: options.names(text, role) if text is not None else []
        for role, text in (
            ("increase", args.increase),
            ("decrease", args.decrease),
            ("keep", args.keep),
        )
    }

    import numpy as np

    import ctrlgan
    from ctrlgan._fs import write_atomic
    from ctrlgan.artifact import Artifact
    from ctrlgan.training import edit

    artifact = Artifact.open(args.model)
    classes = options.class_spec(args.cls, artifact.manifest.classes)
    if len(classes) not in (1, len(seeds)):
        raise InvalidRequest(
            "class", f"give one class or one per seed ({len(seeds)}), got {len(classes)}"
        )
    result = edit.edit_noise(
        artifact,
        classes,
        seeds,
        **roles,
        weight=weight,
        penalty=args.penalty,
        steps=steps,
        accumulate=args.accumulate,
        images=True,
    )
    n, columns = len(seeds), steps + 1
    grid = result.images.transpose(1, 0, 2, 3, 4).reshape(n * columns, *result.images.shape[2:])
    ctrlgan.save_grid(grid, out, nrow=columns, scale=args.scale)
    z = np.ascontiguousarray(result.z[-1], dtype=np.float32)
    if save_z is not None:
        buffer = io.BytesIO()
        np.save(buffer, z)
        write_atomic(save_z, buffer.getvalue(), durable=False)
    names = artifact.manifest.classes
    shown = names[classes[0]] if len(classes) == 1 else "one per seed"
    print(
        f"edited {n} sample(s) (class {shown}; seeds {args.seeds}): {steps} steps of weight "
        f"{result.weight:g}, penalty {result.penalty:g}"
        f"{', gradients accumulated' if result.accumulate else ''}; read by {result.reader}"
    )
    head = f"{'feature':<12}{'role':<10}{'step 0':>10}{f'step {steps}':>10}"
    print(f"{head}{'change':>10}{'/ spread':>10}")
    for role in ("increase", "decrease", "keep"):
        for name in getattr(result, role):
            values = result.features[name]
            change = float(result.change(name).mean())
            print(
                f"{name:<12}{role:<10}{float(values[0].mean()):>10.4f}"
                f"{float(values[-1].mean()):>10.4f}{change:>+10.4f}"
                f"{change / result.scale[name]:>+10.2f}"
            )
    dz = float(result.distance().mean())
    print(f"(the reader's values, means over the samples; mean |dz| {dz:.3f})")
    print(f"wrote {out} ({n} rows = samples x {columns} columns = steps 0..{steps})")
    if save_z is not None:
        again = f" --class {args.cls}" if len(classes) == 1 else ""
        print(
            f"wrote {save_z} (the edited noise, float32 [{n}, {z.shape[1]}]; "
            f"ctrlgan sample {args.model} --z {save_z}{again})"
        )
    return 0
