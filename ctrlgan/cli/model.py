"""`ctrlgan export` (the ONNX graphs into the artifact, checked) and `ctrlgan info` (the
manifest, with everything that loading verifies: checksums, the manifest's meaning, and each
graph's signature as the graph itself declares it)."""

from __future__ import annotations

import argparse
import sys

from ctrlgan.cli import options


def add_parsers(sub) -> None:
    e = options.command(
        sub,
        "export",
        help="write the model's ONNX graphs into its artifact",
        description="Write generator.onnx (the ONNX contract: z_a, z_b, t, class_a, class_b, s, "
        "alpha -> image; standard ONNX ops only, the latent prologue's nodes named prologue/..., "
        "the model's meaning in the graph's metadata), "
        "generator.fp16.onnx and generator.body.onnx (latent -> image) into the artifact, "
        "with their checksums and signatures in the manifest. The artifact is replaced "
        "atomically; on any error it is left as it was.",
    )
    options.add_model(e)
    e.add_argument(
        "--check",
        action="store_true",
        help="then compare every graph with the torch model (onnxruntime, the ONNX reference "
        "evaluator) at batches 1, 7 and 256; exit 1 if one is off",
    )
    e.add_argument("--check-only", action="store_true", help="check the graphs already exported")
    e.add_argument(
        "--reference-batches",
        type=options.batch_sizes,
        default=None,
        metavar="B,B",
        help="batches for the (slow) ONNX reference evaluator (default: all checked batches)",
    )
    e.set_defaults(func=run_export)

    i = sub.add_parser("info", help="show a model artifact's manifest (verifies checksums)")
    options.add_model(i)
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=run_info)


def run_export(args: argparse.Namespace) -> int:
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


def run_info(args: argparse.Namespace) -> int:
    from ctrlgan.artifact import Artifact
    from ctrlgan.runtime.ort import OrtSession, check_runs

    artifact = Artifact.open(args.model)  # checksums, the manifest's meaning, the table
    m = artifact.manifest
    graphs = [name for name in m.files if name.endswith(".onnx")]
    for name in graphs:  # each graph loads, declares the signature the manifest records, and
        session = OrtSession.open(artifact, name, device="cpu", intra_op_threads=1)
        check_runs(artifact, name, session)  # draws a finite image of every class
    if args.json:
        print(m.to_json(), end="")
        return 0
    p = m.provenance
    print(f"model        {artifact.path}")
    print(f"classes      {len(m.classes)}: {', '.join(m.classes)}")
    print(f"image        {'x'.join(map(str, m.image_shape))} (C x H x W) in {m.value_range}")
    print(f"z_dim        {m.z_dim}   embedding {m.embedding}")
    print(f"directions   {', '.join(m.directions) or 'none'}")
    if "converted_from" in p:  # ctrlgan convert: another project's trained weights
        digest = str(p.get("sha256", "?"))[:16]
        print(f"converted    from {p['converted_from']} ({p.get('format', '?')}, sha256 {digest}…)")
    else:
        print(f"trained on   {p.get('dataset', '?')} ({p.get('n_images', '?')} images)")
        print(f"steps        {p.get('steps', '?')}   seed {p.get('seed', '?')}")
    print(f"command      {p.get('command', '?')}")
    metrics = p.get("metrics")
    for name, value in (metrics if isinstance(metrics, dict) else {}).items():
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value}"
        print(f"metric       {name} = {shown}")
    for name, digest in m.files.items():
        how = "verified; loads and runs in onnxruntime" if name in graphs else "verified"
        print(f"file         {name}  sha256 {digest[:16]}…  ({how})")
    return 0
