"""sleb: remove redundant transformer blocks from Hugging Face decoder LLMs (SLEB, ICML 2024).

    from sleb import load_model, prune
    prune("default", "out/smollm2-20", ratios=[0.2])   # the default pick: sleb+refine

See README.md for the command line (`sleb`, or `python -m sleb`) and the Python API; docs/ for the rest.
"""

from .blocks import BlockSwitch, find_blocks
from .calibration import CalibrationSpec, build_calibration
from .errors import SlebError
from .loading import load_model
from .prune import DEFAULT_METHOD, METHODS, PICK_METHODS, choose, find_removal, prune
from .removal import remove_blocks, save_checkpoint
from .search import SearchResult, fast_search, reference_search
from .version import __version__

__all__ = [
    "DEFAULT_METHOD", "PICK_METHODS", "BlockSwitch", "CalibrationSpec", "METHODS", "SearchResult", "SlebError",
    "__version__", "build_calibration", "choose", "fast_search", "find_blocks", "find_removal", "load_model", "prune",
    "reference_search", "remove_blocks", "save_checkpoint",
]
