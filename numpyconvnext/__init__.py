"""numpyconvnext: ConvNeXt for 1D market data in NumPy + Numba.

    from numpyconvnext import ConvNeXt1D, CONFIGS, save, load
"""

from numpyconvnext.checkpoint import CheckpointError, load, load_checkpoint, save
from numpyconvnext.model import CONFIGS, ConvNeXt1D

__all__ = ["CONFIGS", "CheckpointError", "ConvNeXt1D", "load", "load_checkpoint", "save"]
__version__ = "0.1.0"
