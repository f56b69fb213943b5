"""The options of `ctrlgan train` as a dataclass, without torch: the CLI builds its help from
these defaults, and `ctrlgan --help` must not pay for importing torch (validate() does, when a
run starts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ctrlgan import validate
from ctrlgan.architecture import MAX_CHANNELS, MAX_WIDTH
from ctrlgan.errors import InvalidRequest

if TYPE_CHECKING:
    from ctrlgan.training.disentangle import InfoCodes


MAX_STEPS = 10**9
MAX_RENDERED = 1_000_000  # --n-data: procedural images rendered (and held) in memory
LIMITS = {  # option -> its largest value (all are ints >= 1)
    "z_dim": MAX_WIDTH,
    "g_channels": MAX_CHANNELS,
    "d_channels": MAX_CHANNELS,
    "embed_dim": MAX_WIDTH,
    "steps": MAX_STEPS,
    "batch_size": 65_536,
    "d_steps": 1000,
    "sample_every": MAX_STEPS,
    "checkpoint_every": MAX_STEPS,
}


@dataclass
class TrainConfig:
    """Every option of `ctrlgan train`; the defaults train the bundled digits model."""

    data: str = "digits"
    out: str = "runs/digits"
    image_size: int | None = None  # None: the data set's own size (digits 16, shapes 32)
    n_data: int | None = None  # procedural data sets only (shapes)
    correlate: list = field(default_factory=list)  # shapes: [[factor_a, factor_b, rho], ...]
    arch: str = "ctrlgan"  # ctrlgan | course (the source's MNIST networks; architecture.py)
    z_dim: int = 64
    g_channels: int = 64
    d_channels: int = 64
    embedding: str = "onehot"
    embed_dim: int = 16
    discriminator: str = "concat"
    loss: str = "bce"
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_steps: int = 1
    gp_weight: float = 10.0
    seed: int = 0
    sample_every: int = 500
    checkpoint_every: int = 500
    eval_per_class: int = 1000
    info_codes: int = 0  # InfoGAN: z dims [0, info_codes) are continuous codes (disentangle.py)
    info_categories: int = 0  # InfoGAN: values of one categorical code in the next z dim (0: none)
    info_lambda: float = 1.0  # weight of reg_d (InfoGAN or supervised codes)
    supervised_codes: list = field(default_factory=list)  # shapes: factors in z dims 0..m-1
    feature_steps: int = 4000  # steps fitting the feature network the artifact ships (0: none)
    resume: bool = False
    command: str = ""  # provenance: the command line that started the run

    def validate(self) -> None:
        from ctrlgan.architecture import ARCHS, EMBEDDINGS, IMAGE_SIZES
        from ctrlgan.training import losses
        from ctrlgan.training.disentangle import SUPERVISED_FACTORS
        from ctrlgan.training.nets import DISCRIMINATORS

        # Upper bounds keep every run within memory (the networks, a batch) and time.
        for name, hi in LIMITS.items():
            validate.integer(getattr(self, name), name, 1, hi)
        validate.integer(self.feature_steps, "feature_steps", 0, MAX_STEPS)
        if self.n_data is not None:  # shapes are rendered in memory: 4 KiB each at 32 px
            validate.integer(self.n_data, "n_data", 1, MAX_RENDERED)
            size = self.image_size or 32
            total = available_memory()
            need = self.n_data * (size * size + 4) * 4  # float32 pixels and four factors
            if self.data == "shapes" and total is not None and need > 0.5 * total:
                raise InvalidRequest(
                    "n_data",
                    f"{self.n_data:,} shapes of {size}x{size} need {need / 2**30:.1f} GiB; "
                    f"more than half of the {total / 2**30:.1f} GiB available",
                )
        validate.integer(self.eval_per_class, "eval_per_class", 0, 100_000)
        if self.image_size is not None and self.image_size not in IMAGE_SIZES:
            raise InvalidRequest("image_size", f"must be one of {IMAGE_SIZES}")
        choices = {"arch": ARCHS, "embedding": EMBEDDINGS, "discriminator": DISCRIMINATORS}
        choices["loss"] = losses.LOSSES
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InvalidRequest(name, f"must be one of {', '.join(allowed)}")
        for name in ("lr", "gp_weight"):
            value = getattr(self, name)
            if not (value > 0 and value < float("inf")):
                raise InvalidRequest(name, f"must be a positive number, got {value!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise InvalidRequest(name, "must be in [0, 1)")
        if not 0 <= self.seed < 2**63:
            raise InvalidRequest("seed", "must be in [0, 2**63)")
        for name in ("info_codes", "info_categories"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(name, f"must be an integer >= 0, got {value!r}")
        if self.info_categories == 1:
            raise InvalidRequest(
                "info_categories", "a categorical code needs >= 2 values (0: none)"
            )
        n_dims = self.info_codes + (1 if self.info_categories else 0)
        if n_dims > self.z_dim:
            raise InvalidRequest(
                "info_codes", f"{n_dims} code dimensions do not fit in z_dim={self.z_dim}"
            )
        sup = self.supervised_codes
        if not isinstance(sup, (list, tuple)) or not all(isinstance(n, str) for n in sup):
            raise InvalidRequest("supervised_codes", f"must be a list of names, got {sup!r}")
        self.supervised_codes = sup = list(sup)  # a tuple would not equal a checkpoint's list
        unknown = [n for n in sup if n not in SUPERVISED_FACTORS]
        if unknown or len(set(sup)) != len(sup):
            raise InvalidRequest(
                "supervised_codes",
                f"give distinct names of {', '.join(SUPERVISED_FACTORS)}, got {list(sup)}",
            )
        if sup and n_dims:
            raise InvalidRequest(
                "supervised_codes", "cannot be combined with info_codes or info_categories"
            )
        if len(sup) > self.z_dim:
            raise InvalidRequest("supervised_codes", f"more codes than z_dim={self.z_dim}")
        if self.arch == "course":  # the source's networks, exactly: nothing else plugs in
            course = {"embedding": "onehot", "discriminator": "concat", "loss": "bce"}
            for name, value in course.items():
                if getattr(self, name) != value:
                    raise InvalidRequest(name, f"--arch course needs {name} {value}")
            if n_dims or sup:
                raise InvalidRequest("arch", "--arch course takes no info or supervised codes")
            if self.image_size not in (None, 28):
                raise InvalidRequest("image_size", "--arch course makes 28x28 images")
        lam = self.info_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam < float("inf"):
            raise InvalidRequest("info_lambda", f"must be a positive number, got {lam!r}")

    def info(self) -> InfoCodes | None:
        """The InfoGAN codes of this run, or None (plain GAN training)."""
        from ctrlgan.training.disentangle import InfoCodes

        if not self.info_codes and not self.info_categories:
            return None
        return InfoCodes(self.info_codes, self.info_categories)


def available_memory() -> int | None:
    """Bytes this process may use: physical memory, or less under an address-space limit
    (ulimit -v); None where the platform does not say."""
    import os

    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            total = min(total, soft)
    except (ImportError, ValueError, OSError):
        pass
    return total
