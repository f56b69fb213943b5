"""MIG and DCI of a generator trained on 16x16 shapes (docs/controllable.md, issue 6).

    ctrlgan train --data shapes --image-size 16 --z-dim 16 --g-channels 32 --d-channels 32 \\
        --steps 3000 --seed S --eval-per-class 200 --threads 1 --quiet --feature-steps 0 \\
        [--info-codes 4 | --supervised-codes scale,pos_x,pos_y] --out runs/NAME
    python benchmarks/shapes_mig.py runs/NAME/model [...]

MIG over z dims 0..3 from 4,000 samples; the factors of the generated images are read by
metrics.ShapeFactorReader fitted on make_shapes(20000, 16, seed=0).
"""

from __future__ import annotations

import argparse
import json

import torch

from ctrlgan.artifact import Artifact
from ctrlgan.training import metrics
from ctrlgan.training.data import make_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="artifact directories")
    parser.add_argument("--latent-dims", type=int, default=4)
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = make_shapes(20000, 16, seed=0)
    for path in args.models:
        artifact = Artifact.open(path)
        generator = artifact.build_generator().eval()
        r = metrics.shapes_mig(
            generator, data.images, data.labels, data.factors, data.classes,
            latent_dims=args.latent_dims, n=args.n, with_dci=True,
        )  # fmt: skip
        dci = {k: round(v, 3) for k, v in r["dci"].items() if isinstance(v, float)}
        row = {"model": path, "mig": round(r["mig"], 4), "dci": dci}
        row["disentangle"] = artifact.manifest.provenance.get("disentangle", {}).get("method")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
