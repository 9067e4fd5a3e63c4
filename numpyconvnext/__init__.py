"""numpyconvnext: ConvNeXt for 1D market data in NumPy + Numba.

    from numpyconvnext import ConvNeXt1D, CONFIGS, save, load, set_num_threads

Importing it changes nothing outside the package (threads: numpyconvnext/threads.py).
"""

from numpyconvnext.checkpoint import CheckpointError, load, load_checkpoint, save
from numpyconvnext.model import CONFIGS, ConvNeXt1D
from numpyconvnext.threads import get_num_threads, set_num_threads

__all__ = ["CONFIGS", "CheckpointError", "ConvNeXt1D", "get_num_threads", "load", "load_checkpoint",
           "save", "set_num_threads"]
__version__ = "0.1.0"
