"""The GPU variant of ``benchmarks/cost.py``: the same table on the first CUDA device, run as is.

    .venv/bin/python benchmarks/cost_gpu.py [cost.py options]

Without a CUDA device it prints that it skipped and exits 0 (before importing Lightning). On CUDA, times are wall
time after a ``torch.cuda.synchronize()`` and the bandwidth line is the device's measured read bandwidth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (torch.cuda.is_available() is False); run on a GPU machine as is")
        sys.exit(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cost import main

    sys.exit(main(["--device", "cuda", *sys.argv[1:]]))
