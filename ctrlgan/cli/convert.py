"""`ctrlgan convert`: another project's generator checkpoint -> a ctrlgan model artifact
(ctrlgan/convert.py). One format: ``course``, the source course's 28x28 conditional generator."""

from __future__ import annotations

import argparse
import shlex

from ctrlgan.cli import options


def add_parsers(sub) -> None:
    c = options.command(
        sub,
        "convert",
        help="convert another project's generator checkpoint into a model artifact",
        description="Convert FILE, the course's conditional generator (torch.save(gen."
        "state_dict()) or a dict with it under 'gen'; read with torch.load(weights_only=True) "
        "only), into a model artifact at --out: its hidden width, image channels and input "
        "width are read from the weights, the class names from --classes, and z_dim is the "
        "input width less the number of classes. Every key, shape and value is checked first; "
        "the artifact (with its ONNX graphs unless --no-export) is written atomically. Then "
        "sample, serve or find directions with it like any model (docs/architecture.md).",
    )
    c.add_argument(
        "format", choices=["course"], metavar="FORMAT", help="the checkpoint's source: course"
    )
    c.add_argument("file", metavar="FILE", help="the checkpoint (.pth, .pt)")
    c.add_argument(
        "--classes",
        required=True,
        help="the class names in one-hot order: a count (10: names 0..9), a range (0-9) or a "
        "comma list (cat,dog)",
    )
    c.add_argument("--out", required=True, help="the model directory to write (replaced)")
    c.add_argument(
        "--z-dim",
        type=int,
        default=None,
        help="the noise width you expect; checked against the file and --classes",
    )
    c.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the ONNX graphs too, as ctrlgan export does (--no-export: add them later)",
    )
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrlgan.convert import convert_course

    artifact = convert_course(
        args.file,
        args.classes,
        args.out,
        z_dim=args.z_dim,
        export=args.export,
        command=shlex.join(["ctrlgan", *args.argv]),
    )
    m, config = artifact.manifest, artifact.manifest.generator_config
    print(
        f"converted {args.file}: z_dim {m.z_dim}, {len(m.classes)} classes "
        f"({', '.join(m.classes[:10])}{', ...' if len(m.classes) > 10 else ''}), "
        f"hidden width {config.base_channels}, image {'x'.join(map(str, m.image_shape))}"
    )
    graphs = [name for name in m.files if name.endswith(".onnx")]
    print(f"wrote {artifact.path} ({', '.join(m.files)})")
    if not graphs:
        print(f"no ONNX graphs: add them with ctrlgan export {shlex.quote(str(artifact.path))}")
    return 0
