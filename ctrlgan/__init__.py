"""ctrlgan: conditional and controllable generation with GANs.

import ctrlgan
g = ctrlgan.load("digits")
x = g.sample(classes=[3, 3, 7], seeds=[0, 1, 2])   # float32 [3, 1, 16, 16] in [-1, 1]
ctrlgan.save_grid(x, "grid.png")
"""

__version__ = "0.1.0"

from ctrlgan import errors
from ctrlgan.images import save_grid, to_uint8
from ctrlgan.runtime import BatchingGenerator, Generator, load, noise

__all__ = [
    "BatchingGenerator",
    "Generator",
    "__version__",
    "errors",
    "load",
    "noise",
    "save_grid",
    "to_uint8",
]
