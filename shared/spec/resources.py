"""`resources:` and dstack's GPU grammar (`vendor:name(s):memory:count`, ranges, the mapping form)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from shared.spec.checks import (
    _check_disk,
    _check_gpu,
    _check_memory,
    _check_range,
    _check_shm_size,
)
from shared.spec.gpu_names import _gpu_name, _gpu_vendor
from shared.spec.limits import (
    _BOOL_TAG,
    _CAPABILITY_EXPECTED,
    _CAPABILITY_RE,
    _COUNT_EXPECTED,
    _COUNT_TOKEN_RE,
    _CPU_EXPECTED,
    _GPU_PART_LABELS,
    _NULL_TAG,
    _NUMBER_RE,
    _SIZE_EXPECTED,
    _SIZE_RANGE_EXPECTED,
    _UNSUPPORTED_GPU_VENDORS,
    GPU_VENDORS,
)
from shared.spec.model import GpuRequest, Problems, Range, Resources, SpecError
from shared.spec.nodes import (
    _at,
    _checked,
    _child,
    _describe,
    _entries,
    _fail,
    _fields,
    _is_null,
    _items,
    _Parser,
    _quote,
    _text,
    _unknown_field_message,
)
from shared.units import parse_memory_mib


def _parse_resources(node: yaml.Node, path: str) -> Resources:
    """Each resource at its node; a problem in one does not stop the others from being read."""
    parsers: dict[str, tuple[str, _Parser]] = {
        "gpu": ("gpu", _parse_gpu_node),
        "cpu": ("cpu", _parse_cpu),
        "memory": ("memory_mib", _size_range_parser(_check_memory)),
        "disk": ("disk_mib", _parse_disk),
        "shm_size": ("shm_size_mib", _checked(_parse_size, _check_shm_size)),
    }
    fields: dict[str, Any] = {}
    problems = Problems()
    with problems.collect():
        for key_node, key, value_node in _entries(node, path):
            with problems.collect():
                if key not in parsers:
                    _fail(key_node, _child(path, key), _unknown_field_message(key, sorted(parsers)))
                if not _is_null(value_node):
                    attribute, parse = parsers[key]
                    fields[attribute] = parse(value_node, f"{path}.{key}")
    problems.raise_any()
    return Resources(**fields)


def _range_text(node: yaml.Node, path: str, parse_side: Callable[[str], float], expected: str) -> Range:
    """A scalar `8`, `2..8`, `2..` or `..8`; each side parsed by `parse_side` (which raises ValueError)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL_TAG, _BOOL_TAG):
        _fail(node, path, f"expected {expected}, got {_describe(node)}")
    try:
        return _parse_range(node.value, parse_side)
    except ValueError:
        _fail(node, path, f"expected {expected}, got {_describe(node)}")


def _parse_range(text: str, parse_side: Callable[[str], float]) -> Range:
    """`8` -> Range(8, 8); `2..8`, `2..`, `..8` -> the inclusive range; ValueError when malformed."""
    if ".." not in text:
        value = parse_side(text.strip())
        return Range(value, value)
    low, _, high = (side.strip() for side in text.partition(".."))
    if not low and not high:
        raise ValueError(f"expected a range like 2..8, 2.. or ..8, got {text!r}")
    return Range(parse_side(low) if low else None, parse_side(high) if high else None)


def _parse_int(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,18}", text, re.ASCII):
        raise ValueError(f"expected an integer, got {text!r}")
    return int(text)


def _parse_number(text: str) -> int | float:
    if not _NUMBER_RE.fullmatch(text) or len(text) > 32:
        raise ValueError(f"expected a number, got {text!r}")
    number = float(text)
    return int(number) if number.is_integer() else number


def _parse_cpu(node: yaml.Node, path: str) -> Range:
    """`cpu: 8`, `cpu: 2..8`, or dstack's `{count: 8.., arch: x86}` (arch is ignored)."""
    at, count_path = node, path
    if isinstance(node, yaml.MappingNode):
        fields = dict(_fields(node, path, ("count", "arch")))
        if "count" not in fields:
            _fail(node, path, "expected a mapping with count")
        at, count_path = fields["count"], f"{path}.count"
    cpu = _range_text(at, count_path, _parse_number, _CPU_EXPECTED)
    with _at(at):
        _check_range(count_path, cpu)
    return cpu


def _size_range_parser(check: Callable[[Range], None]) -> _Parser:
    def parse_size_range(node: yaml.Node, path: str) -> Range:
        size_mib = _range_text(node, path, parse_memory_mib, _SIZE_RANGE_EXPECTED)
        with _at(node):
            check(size_mib)
        return size_mib

    return parse_size_range


def _parse_disk(node: yaml.Node, path: str) -> Range:
    """`disk: 100GB..` or dstack's `{size: 100GB..}`."""
    if isinstance(node, yaml.MappingNode):
        fields = dict(_fields(node, path, ("size",)))
        if "size" not in fields:
            _fail(node, path, "expected a mapping with size")
        return _size_range_parser(_check_disk)(fields["size"], f"{path}.size")
    return _size_range_parser(_check_disk)(node, path)


def _parse_size(node: yaml.Node, path: str) -> int:
    """A single size such as `16GB` (a bare number means GB), in MiB."""
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL_TAG, _BOOL_TAG):
        _fail(node, path, f"expected {_SIZE_EXPECTED}, got {_describe(node)}")
    try:
        return parse_memory_mib(node.value)
    except ValueError:
        _fail(node, path, f"expected {_SIZE_EXPECTED}, got {_describe(node)}")


def parse_gpu(text: str) -> GpuRequest | None:
    """Parse dstack's gpu string (`H100:80GB:2`, `A10G,A100`, `amd:2`, `24GB..40GB:2`, `1..8`, `8`).

    Colon-separated parts in any order: a vendor, comma-separated alternative names, per-GPU memory (a size
    or a range), and a count (an int or a range; exactly 1 if absent). The vendor is inferred from well-known
    names when all of them agree. Returns None for a request of exactly 0 GPUs. Raises `ValueError` with a
    one-line message; the result has passed the same checks as `validate_spec`.
    """
    parts: dict[str, Any] = {}
    for token in text.split(":"):
        kind, value = _gpu_token(token.strip(), text)
        if kind in parts:
            raise ValueError(f"more than one {_GPU_PART_LABELS[kind]} in {_quote(text)}")
        parts[kind] = value
    names = parts.get("names", ())
    gpu = GpuRequest(
        count=parts.get("count", Range(1, 1)),
        vendor=_gpu_vendor(parts.get("vendor"), names),
        names=names,
        memory_mib=parts.get("memory"),
    )
    try:
        _check_gpu(gpu, "")
    except SpecError as error:
        raise ValueError(error.message) from None
    return None if gpu.count.max == 0 else gpu


def _parse_gpu_node(node: yaml.Node, path: str) -> GpuRequest | None:
    """`gpu:` as dstack's string (see `parse_gpu`), an integer count, or a mapping; None for 0 GPUs."""
    if isinstance(node, yaml.MappingNode):
        gpu = _gpu_mapping(node, path)
        with _at(node):
            _check_gpu(gpu, path)
        return None if gpu.count.max == 0 else gpu
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_NULL_TAG, _BOOL_TAG):
        _fail(node, path, f"expected a GPU spec like H100:2 or 24GB..:1..8, got {_describe(node)}")
    try:
        return parse_gpu(node.value)
    except ValueError as error:
        _fail(node, path, str(error))


def _gpu_mapping(node: yaml.Node, path: str) -> GpuRequest:
    """dstack's `{name: [H100, A100], vendor: nvidia, memory: 40GB.., count: 2}` (total_memory is ignored),
    and the DRA-style `compute_capability: 8.0..`, which implies vendor nvidia."""
    parts: dict[str, Any] = {}
    keys = ("name", "vendor", "memory", "count", "total_memory", "compute_capability")
    for key, value in _fields(node, path, keys):
        sub_path = f"{path}.{key}"
        if key == "total_memory" or _is_null(value):
            continue
        if key == "name":
            parts["names"] = tuple(_gpu_names(value, sub_path))
        elif key == "vendor":
            parts["vendor"] = _gpu_vendor_text(_text(value, sub_path), value, sub_path)
        elif key == "memory":
            parts["memory_mib"] = _range_text(value, sub_path, parse_memory_mib, _SIZE_RANGE_EXPECTED)
        elif key == "compute_capability":
            parts["compute_capability"] = _capability_range(value, sub_path)
        else:
            parts["count"] = _range_text(value, sub_path, _parse_int, _COUNT_EXPECTED)
    try:
        parts["vendor"] = _gpu_vendor(parts.get("vendor"), parts.get("names", ()))
    except ValueError as error:
        _fail(node, path, str(error))
    if "compute_capability" in parts and parts["vendor"] is None:
        parts["vendor"] = "nvidia"
    return GpuRequest(**parts)


def _capability_range(node: yaml.Node, path: str) -> Range:
    """As dstack means it: a bare `8.0` is a minimum (8.0 and newer); a range keeps its bounds."""
    capability = _range_text(node, path, _parse_capability, _CAPABILITY_EXPECTED)
    return capability if ".." in node.value else Range(capability.min, None)


def _parse_capability(text: str) -> float:
    """`"8.6"` → 8.6, `"9"` → 9.0; ValueError unless it is `MAJOR[.MINOR]` with a one-digit minor."""
    if not _CAPABILITY_RE.fullmatch(text):
        raise ValueError(f"expected a compute capability, got {text!r}")
    return float(text)


def _gpu_names(node: yaml.Node, path: str) -> Iterator[str]:
    """GPU names from a list or a single (possibly comma-separated) string."""
    for index, item in enumerate(_items(node, path)):
        for name in _text(item, f"{path}[{index}]").split(","):
            try:
                yield _gpu_name(name.strip())
            except ValueError as error:
                _fail(item, path, str(error))


def _gpu_vendor_text(text: str, node: yaml.Node, path: str) -> str:
    vendor = text.strip().lower()
    if vendor in _UNSUPPORTED_GPU_VENDORS:
        _fail(node, path, "TPUs are not supported; use nvidia, amd or intel GPUs")
    if vendor not in GPU_VENDORS:
        _fail(node, path, f"expected one of {', '.join(GPU_VENDORS)}, got {_quote(text)}")
    return vendor


def _gpu_token(token: str, text: str) -> tuple[str, Any]:
    """Classify one colon-separated part of a gpu string as (kind, value); ValueError if it is none of them."""
    if not token:
        raise ValueError(f"empty part in {_quote(text)}; expected parts like nvidia:H100:80GB:2")
    lowered = token.lower()
    if lowered in GPU_VENDORS:
        return "vendor", lowered
    if lowered in _UNSUPPORTED_GPU_VENDORS:
        raise ValueError("TPUs are not supported; use nvidia, amd or intel GPUs")
    if _COUNT_TOKEN_RE.fullmatch(token):
        try:
            return "count", _parse_range(token, _parse_int)
        except ValueError:
            raise ValueError(f"expected {_COUNT_EXPECTED}, got {_quote(token)} in {_quote(text)}") from None
    if token[:1] in set("0123456789.+-") and any(c.isalpha() for c in token):
        try:
            return "memory", _parse_range(token, parse_memory_mib)
        except ValueError:
            raise ValueError(f"expected GPU memory like 80GB or 24GB..40GB, got {_quote(token)}") from None
    return "names", tuple(_gpu_name(name.strip()) for name in token.split(","))
