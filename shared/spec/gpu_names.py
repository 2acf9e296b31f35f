"""GPU model names and the vendors of well-known models."""

from __future__ import annotations

import re

from shared.spec.limits import _TPU_NAME_RE, GPU_NAME_RE
from shared.spec.nodes import _quote

_KNOWN_GPU_MODELS = {
    "nvidia": "h100 h100nvl h200 gh200 b100 b200 gb200 a100 a10 a10g a30 a40 a16 a2 l4 l40 l40s t4 v100 p100 p40 "
    "p4 k80 m60 a4000 a5000 a6000 rtx4000 rtx5000 rtx6000 rtx8000",
    "amd": "mi300x mi300a mi308x mi325x mi355x mi250 mi250x mi210 mi100 mi50",
    "intel": "gaudi gaudi2 gaudi3",
}
_KNOWN_GPU_VENDOR = {
    model: vendor for vendor, models in _KNOWN_GPU_MODELS.items() for model in models.split()
}


def _gpu_name(name: str) -> str:
    """A GPU model name as written; ValueError for TPUs and for text that is not a name."""
    if _TPU_NAME_RE.fullmatch(name) or name.lower().startswith("tpu"):
        raise ValueError(f"{_quote(name)}: TPUs are not supported; use nvidia, amd or intel GPUs")
    if not GPU_NAME_RE.fullmatch(name):
        raise ValueError(
            f"unrecognized part {_quote(name)}; expected a vendor (nvidia, amd, intel), GPU names like "
            "A10G,A100, memory like 80GB or 24GB..40GB, or a count like 2 or 1..8"
        )
    return name


def _known_gpu_vendor(name: str) -> str | None:
    """The vendor of a well-known GPU model (case-insensitive), else None."""
    lowered = name.lower()
    vendor = _KNOWN_GPU_VENDOR.get(lowered) or _KNOWN_GPU_VENDOR.get(lowered.split("-")[0])
    if vendor is None and lowered.startswith("rtx"):
        return "nvidia"
    if vendor is None and lowered.startswith("gaudi"):
        return "intel"
    if vendor is None and re.match(r"mi\d", lowered):
        return "amd"
    return vendor


def _gpu_vendor(vendor: str | None, names: tuple[str, ...]) -> str | None:
    """The explicit vendor (ValueError if a well-known name contradicts it), else the vendor that every name
    is known to have, else None."""
    known = [_known_gpu_vendor(name) for name in names]
    if vendor is not None:
        for name, name_vendor in zip(names, known, strict=True):
            if name_vendor is not None and name_vendor != vendor:
                raise ValueError(f"{name} is made by {name_vendor}, not {vendor}")
        return vendor
    if known and None not in known and len(set(known)) == 1:
        return known[0]
    return None
