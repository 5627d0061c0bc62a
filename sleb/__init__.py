"""sleb: remove redundant transformer blocks from Hugging Face decoder LLMs (SLEB, ICML 2024).

    from sleb import load_model, prune
    prune("default", "out/smollm2-sleb-20", ratios=[0.2])

See README.md for the command line (`python -m sleb`) and the Python API.
"""

__version__ = "0.1.0"

from .blocks import BlockSwitch, find_blocks  # noqa: E402
from .calibration import CalibrationSpec, build_calibration  # noqa: E402
from .errors import SlebError  # noqa: E402
from .loading import load_model  # noqa: E402
from .prune import METHODS, find_removal, prune  # noqa: E402
from .removal import remove_blocks, save_checkpoint  # noqa: E402
from .search import SearchResult, fast_search, reference_search  # noqa: E402

__all__ = [
    "BlockSwitch", "CalibrationSpec", "METHODS", "SearchResult", "SlebError", "build_calibration", "fast_search",
    "find_blocks", "find_removal", "load_model", "prune", "reference_search", "remove_blocks", "save_checkpoint",
]
