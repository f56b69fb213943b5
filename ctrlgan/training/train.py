"""The training loop of a conditional GAN, top to bottom in one function (`train`).

The generator sees z concatenated with a class embedding (one-hot by default); the
discriminator sees the image plus one one-hot channel per class (or scores by projection).
Losses: BCE (the source's) or W-loss with gradient penalty. Adam with lr 2e-4 and betas
(0.5, 0.999); weights start N(0, 0.02). Optional InfoGAN codes (``info_codes``,
``info_categories``; see disentangle.py) add lambda * reg_d to both players' losses, drawing
the same random stream as a run without them.

Reproducible and exactly resumable: every step draws its batch, noise and penalty mixing
weights from a torch.Generator seeded by (seed, step) alone, so the state to carry across a
restart is only the networks, the optimisers and the step. Checkpoints are one safetensors file
(tensors) with a JSON header (step, config, optimiser hyper-parameters), written to a temporary
file and renamed, so an interrupted write leaves the previous checkpoint intact. Ctrl-C stops
after the current step and writes a checkpoint; a second Ctrl-C stops at once, keeping the last
checkpoint. The run ends by measuring the generator and writing the model artifact.

A run directory (--out) holds:
    checkpoint.safetensors   the latest checkpoint (exact resume with --resume)
    samples/step_NNNNNN.png  sample grids, one row per class, fixed seeds
    model/                   the model artifact (see ctrlgan.artifact)
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from ctrlgan._fs import write_atomic
from ctrlgan.architecture import activations, parameters
from ctrlgan.artifact import GENERATOR_WEIGHTS, Artifact, Manifest, write_artifact
from ctrlgan.errors import CtrlganError, InvalidRequest
from ctrlgan.images import save_grid
from ctrlgan.kernels.reference import noise
from ctrlgan.network import IMAGE_SIZES, ConditionalGenerator, GeneratorConfig
from ctrlgan.training import feature_net, losses, metrics
from ctrlgan.training.config import TrainConfig, available_memory
from ctrlgan.training.data import load_dataset
from ctrlgan.training.disentangle import (
    InfoCodes,
    attach_factor_net,
    attach_q_head,
    codes_to_z,
    factor_codes,
    info_loss,
    regress,
)
from ctrlgan.training.nets import CourseDiscriminator, Discriminator, course_init, init_weights

CHECKPOINT = "checkpoint.safetensors"
SAMPLE_SEEDS = 8  # columns of the sample grids


# Options that may change when a run is resumed; all others must match the checkpoint.
RESUMABLE = {"out", "steps", "sample_every", "checkpoint_every", "eval_per_class", "resume"}
RESUMABLE |= {"command", "feature_steps"}


class TrainingInterrupted(CtrlganError):
    """Ctrl-C stopped training; the checkpoint holds the last completed step."""

    def __init__(self, step: int, checkpoint: Path):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(
            f"interrupted after step {step}; checkpoint saved to {checkpoint} "
            "(continue with --resume)"
        )


@dataclass
class TrainResult:
    artifact: Artifact
    steps: int
    metrics: dict
    seconds: float


def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one training step: a function of (seed, step) only, hence exact resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    config.validate()
    out = Path(config.out)
    data = load_dataset(
        config.data,
        size=config.image_size,
        n=config.n_data,
        seed=config.seed,
        correlate=[tuple(c) for c in config.correlate],
    )
    channels, height, width = data.image_shape
    if height != width or height not in IMAGE_SIZES:
        raise InvalidRequest(
            "image_size", f"data images are {height}x{width}; pass one of {IMAGE_SIZES}"
        )
    if config.arch == "course" and height != 28:
        raise InvalidRequest(
            "image_size",
            f"--arch course makes 28x28 images; the data's are {height}x{width}: "
            "pass --image-size 28",
        )
    sup = list(config.supervised_codes)
    if sup and data.factors is None:
        raise InvalidRequest("supervised_codes", f"{data.name!r} has no factors (use shapes)")
    if config.feature_steps and len(data) < feature_net.min_images(data.classes):
        # refused now rather than after the whole run, when the network is fitted
        raise InvalidRequest(
            "feature_steps",
            f"the feature network needs >= {feature_net.min_images(data.classes)} images, "
            f"{data.name!r} has {len(data)}: pass --feature-steps 0",
        )
    g_config = GeneratorConfig(
        z_dim=config.z_dim,
        n_classes=len(data.classes),
        image_size=height,
        channels=channels,
        base_channels=config.g_channels,
        embedding=config.embedding,
        embed_dim=config.embed_dim if config.embedding == "learned" else 0,
        arch=config.arch,
    )
    _check_memory(config, g_config, data)
    checkpoint_path = out / CHECKPOINT
    if config.resume and not checkpoint_path.is_file():  # before mkdir: nothing is left behind
        raise InvalidRequest("resume", f"no checkpoint in {str(out)!r} to resume from")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidRequest("out", f"cannot create {str(out)!r} ({e.strerror})") from None
    if checkpoint_path.exists() and not config.resume:
        raise InvalidRequest(
            "out", f"{str(out)!r} holds an earlier run's checkpoint: pass --resume or a new --out"
        )

    # Networks and optimisers, seeded for reproducible initial weights.
    torch.manual_seed(config.seed)
    n_classes = len(data.classes)
    G = ConditionalGenerator(g_config)
    if config.arch == "course":
        D = CourseDiscriminator(n_classes, channels, config.d_channels)
        course_init(G)
        course_init(D)
    else:
        D = Discriminator(
            n_classes,
            height,
            channels,
            config.d_channels,
            kind=config.discriminator,
            norm=config.loss == "bce",
        )
        init_weights(G)
        init_weights(D)
    info = config.info()
    if info is not None:  # after D's init, so G and D start as in a run without codes
        attach_q_head(D, info, height, channels)
    if sup:  # the supervised variant's factor regressor, likewise after D's init
        codes = factor_codes(data.factors, data.factor_names, sup)  # [N, m] in [-1, 1]
        attach_factor_net(D, len(sup), height, channels)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr, betas=betas)
    step, seconds = 0, 0.0
    if config.resume:
        step, seconds = _load_checkpoint(checkpoint_path, config, G, D, opt_g, opt_d)

    images, labels = data.images, data.labels
    sample_labels = torch.arange(n_classes).repeat_interleave(SAMPLE_SEEDS)
    sample_z = noise(torch.arange(SAMPLE_SEEDS).repeat(n_classes), config.z_dim)
    (out / "samples").mkdir(exist_ok=True)
    bar = _progress(progress, config.steps, step, "train", "step")
    stop = _StopFlag()
    started = time.perf_counter()
    with stop:
        while step < config.steps:
            rng = step_generator(config.seed, step)
            G.train()
            # Discriminator: real batch vs generated images of the same classes.
            for _ in range(config.d_steps):
                idx = torch.randperm(len(images), generator=rng)[: config.batch_size]
                real, y = images[idx], labels[idx]
                z = torch.randn(len(idx), config.z_dim, generator=rng)
                if sup:  # fakes carry the real batch's factor codes
                    z[:, : len(sup)] = codes_to_z(codes[idx])
                with torch.no_grad():
                    fake = G(z, y)
                if info is None:
                    real_out, fake_out = D(real, y), D(fake, y)
                else:
                    real_out, h = D(real, y), D.features(fake, y)
                    fake_out = D.score(h, y)
                if config.loss == "bce":
                    d_loss = losses.bce_discriminator(real_out, fake_out)
                else:
                    d_loss = losses.wasserstein_critic(real_out, fake_out)
                    gp = losses.gradient_penalty(D, real, fake, y, generator=rng)
                    d_loss = d_loss + config.gp_weight * gp
                if info is not None:  # InfoGAN's D/Q update: L_D + lambda * reg_d
                    d_loss = d_loss + config.info_lambda * info_loss(info, D.q_head(h), z)
                if sup:  # fit the factor regressor on real images (its own parameters)
                    d_loss = d_loss + F.mse_loss(regress(D.factor_net, real), codes[idx])
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            # Generator: fool the discriminator on the last batch's classes.
            z = torch.randn(len(y), config.z_dim, generator=rng)
            if sup:
                z[:, : len(sup)] = codes_to_z(codes[idx])
            if info is None:
                fake = G(z, y)
                fake_out = D(fake, y)
            else:
                h = D.features(G(z, y), y)
                fake_out = D.score(h, y)
            if config.loss == "bce":
                g_loss = losses.bce_generator(fake_out)
            else:
                g_loss = losses.wasserstein_generator(fake_out)
            if info is not None:  # L = L_gan + lambda * reg_d
                reg_d = info_loss(info, D.q_head(h), z)
                g_loss = g_loss + config.info_lambda * reg_d
            if sup:  # L = L_gan + lambda * reg_d, reg_d = MSE(R(G(z, y)), c)
                reg_d = F.mse_loss(regress(D.factor_net, fake, train=False), codes[idx])
                g_loss = g_loss + config.info_lambda * reg_d
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            step += 1

            bar.update(1)
            if step % 10 == 0 or step == config.steps:
                shown = {"d_loss": f"{d_loss.item():.3f}", "g_loss": f"{g_loss.item():.3f}"}
                if info is not None or sup:
                    shown["reg_d"] = f"{reg_d.item():.3f}"
                bar.set_postfix(**shown)
            if step % config.sample_every == 0 or step == config.steps:
                G.eval()
                with torch.no_grad():
                    grid = G(sample_z, sample_labels)
                save_grid(grid, out / "samples" / f"step_{step:06d}.png", SAMPLE_SEEDS, scale=2)
            last = step == config.steps
            if step % config.checkpoint_every == 0 or last or stop.requested:
                elapsed = seconds + time.perf_counter() - started
                _save_checkpoint(checkpoint_path, step, elapsed, config, G, D, opt_g, opt_d)
            if stop.requested and not last:
                bar.close()
                raise TrainingInterrupted(step, checkpoint_path)
    bar.close()
    seconds += time.perf_counter() - started

    # Measure the eval-mode generator, then write the artifact.
    G.eval()
    result_metrics = {}
    if config.eval_per_class:

        def generate(y: torch.Tensor, seed_start: int) -> torch.Tensor:
            z = noise(torch.arange(seed_start, seed_start + len(y)), config.z_dim)
            with torch.no_grad():
                return G(z, y)

        total = n_classes * config.eval_per_class
        with _progress(progress, total, 0, "evaluate", "img") as bar:
            result_metrics = metrics.evaluate(
                generate, images, labels, n_classes, config.eval_per_class, progress=bar.update
            )
    tensors = {GENERATOR_WEIGHTS: G.state_dict()}
    features_entry = {}
    if config.feature_steps:
        # The frozen feature network that `ctrlgan directions` finds directions with: image
        # moments, or the true factors for shapes (feature_net.py).
        with _progress(progress, config.feature_steps, 0, "feature network", "step") as bar:
            net, quality = feature_net.fit(
                data.images,
                data.labels,
                data.classes,
                data.factors,
                steps=config.feature_steps,
                progress=bar.update,
            )
        tensors[feature_net.FEATURE_NET] = net.state_dict()
        features_entry = {"features": feature_net.describe(net, quality)}
    manifest = Manifest(
        z_dim=config.z_dim,
        classes=list(data.classes),
        image_shape=[channels, height, width],
        generator=g_config.to_dict(),
        embedding=config.embedding,
        provenance={
            "dataset": data.name,
            "n_images": len(data),
            "command": config.command,
            "steps": step,
            "seed": config.seed,
            "config": asdict(config),
            "metrics": result_metrics,
            **({} if info is None else {"disentangle": _info_provenance(config, info)}),
            **({} if not sup else {"disentangle": _supervised_provenance(config)}),
            **features_entry,
            "train_seconds": round(seconds, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    artifact = write_artifact(out / "model", manifest, tensors)
    return TrainResult(artifact, step, result_metrics, seconds)


def _check_memory(config: TrainConfig, g_config: GeneratorConfig, data) -> None:
    """Refuse a run that cannot fit in this machine's memory, before anything is created: an
    estimate of both networks (weights, gradients, Adam's two moments) and of a batch's
    activations (the discriminator estimated as a generator of its width), plus the data."""
    total = available_memory()
    if total is None:
        return
    batch = min(config.batch_size, len(data))  # a batch is drawn from the data set
    d_config = dataclasses.replace(g_config, base_channels=config.d_channels)
    weights = sum(4 * 4 * parameters(net) for net in (g_config, d_config))
    batches = sum(4 * 3 * batch * activations(net) for net in (g_config, d_config))
    need = weights + batches + data.images.numel() * data.images.element_size()
    if need > 0.8 * total:
        wider = "g_channels" if config.g_channels >= config.d_channels else "d_channels"
        raise InvalidRequest(
            wider if weights > batches else "batch_size",
            f"this run needs about {need / 2**30:.1f} GiB of memory (networks of width "
            f"{config.g_channels}/{config.d_channels}, batch {batch}, {len(data)} images of "
            f"{'x'.join(map(str, data.image_shape))}), over 80% of the {total / 2**30:.1f} GiB "
            "available: "
            "lower --batch-size, --g-channels or --d-channels",
        )


def _info_provenance(config: TrainConfig, info: InfoCodes) -> dict:
    return {"method": "infogan", "lambda": config.info_lambda, **info.describe()}


def _supervised_provenance(config: TrainConfig) -> dict:
    sup = config.supervised_codes
    return {
        "method": "supervised",
        "lambda": config.info_lambda,
        "factors": list(sup),
        "dims": list(range(len(sup))),
        "code": "c = 2 (f - lo) / (hi - lo) - 1, z = sqrt 2 erfinv(c)",
    }


class _StopFlag:
    """First Ctrl-C: finish the step and checkpoint. Second: the default KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _progress(enabled: bool, total: int, initial: int, desc: str, unit: str):
    """A tqdm bar on stderr for one phase of the run (train, evaluate, feature network)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _save_checkpoint(path: Path, step, seconds, config, G, D, opt_g, opt_d) -> None:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for prefix, module in (("G", G), ("D", D)):
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v
    for prefix, opt in (("opt_g", opt_g), ("opt_d", opt_d)):
        state = opt.state_dict()
        groups[prefix] = state["param_groups"]
        for index, entries in state["state"].items():
            for k, v in entries.items():
                tensors[f"{prefix}.{index}.{k}"] = v
    header = {"step": step, "seconds": seconds, "config": asdict(config), "param_groups": groups}
    data = save(
        {k: v.detach().contiguous() for k, v in tensors.items()},
        metadata={"ctrlgan": json.dumps(header)},
    )
    write_atomic(path, data)  # a full disk: an OSError naming the checkpoint; the old one stays


def _load_checkpoint(path: Path, config: TrainConfig, G, D, opt_g, opt_d) -> tuple[int, float]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as f:
            header = json.loads((f.metadata() or {})["ctrlgan"])
        tensors = load_file(path)
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise InvalidRequest("resume", f"checkpoint {str(path)!r} is unreadable ({e})") from None
    saved = header["config"]
    for f in fields(TrainConfig):
        # Checkpoints older than an option hold its default.
        default = f.default_factory() if f.default is MISSING else f.default
        if f.name not in RESUMABLE and saved.get(f.name, default) != getattr(config, f.name):
            raise InvalidRequest(
                f.name,
                f"differs from the checkpoint's ({saved.get(f.name)!r}); resume with the same",
            )
    if header["step"] > config.steps:
        raise InvalidRequest("steps", f"the checkpoint is already at step {header['step']}")
    for prefix, module in (("G", G), ("D", D)):
        module.load_state_dict(
            {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        )
    for prefix, opt in (("opt_g", opt_g), ("opt_d", opt_d)):
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith(prefix + "."):
                _, index, name = k.split(".", 2)
                state.setdefault(int(index), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": header["param_groups"][prefix]})
    return int(header["step"]), float(header.get("seconds", 0.0))
