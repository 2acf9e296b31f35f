"""Intel Gaudi accelerators through `hl-smi`'s CSV query (`hl-smi -Q <fields> -f csv`).

Gaudi has no Python binding we may depend on, so the agent runs the tool. How it is run is a parameter
(`Runner`), so tests replay the CSV that hl-smi printed on a real host.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence

from agent.detect.result import DetectResult
from agent.detect.sysfs import SYSFS_ROOT, read_numa_node, read_pcie_root
from shared.wire import GpuDevice, GpuMetrics

# argv → (exit status, stdout, stderr); raises OSError or subprocess.TimeoutExpired like subprocess.run.
Runner = Callable[[Sequence[str]], tuple[int, str, str]]

INVENTORY_FIELDS = (
    "index",
    "module_id",
    "name",
    "uuid",
    "serial",
    "bus_id",
    "memory.total",
    "driver_version",
)
METRIC_FIELDS = (
    "index",
    "uuid",
    "utilization.aip",
    "memory.used",
    "memory.total",
    "temperature.aip",
    "power.draw",
)
HL_SMI_TIMEOUT_S = 30.0
NO_TOOL_INFO = "Intel Gaudi: hl-smi not found; no Gaudi accelerators"

# hl-smi prints board names; users ask for the product (`gpu: Gaudi2:8`).
_PRODUCTS = ((re.compile(r"HL-?20\d", re.I), "GAUDI"), (re.compile(r"HL-?2\d\d", re.I), "GAUDI2"))
_GAUDI3 = re.compile(r"HL-?3\d\d", re.I)
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


def detect_gaudi(run: Runner | None = None, *, sysfs_root: str = SYSFS_ROOT) -> DetectResult:
    """Every Gaudi accelerator that hl-smi lists, indexed as hl-smi indexes them.

    No hl-smi on PATH → no devices and one info line. hl-smi failing (exit status, timeout) or printing
    what cannot be parsed → no devices and one warning saying so. Read-only; safe to call repeatedly.
    """
    rows, failure = _query(run, INVENTORY_FIELDS)
    if failure is not None:
        return failure
    try:
        gpus = tuple(_device(row, sysfs_root) for row in rows)
    except (KeyError, ValueError) as err:
        return DetectResult(warnings=(_failure_warning(f"output not understood: {err}"),))
    driver = gpus[0].driver_version if gpus else "unknown"
    return DetectResult(gpus=gpus, info=(f"Intel Gaudi: driver {driver}, {len(gpus)} accelerators",))


def read_gaudi_metrics(run: Runner | None = None) -> tuple[GpuMetrics, ...]:
    """Live utilization, memory used and total, temperature and power of each Gaudi (its clocks and ECC counts
    are not read: fields a version of hl-smi does not know fail the whole query); () when hl-smi is missing or
    fails (the inventory's warning already says why). Never raises."""
    rows, failure = _query(run, METRIC_FIELDS)
    if failure is not None:
        return ()
    try:
        return tuple(
            GpuMetrics(
                index=int(row["index"]),
                utilization_pct=_number(row["utilization.aip"]),
                memory_used_mib=_whole(row["memory.used"]),
                temperature_c=_number(row["temperature.aip"]),
                power_w=_number(row["power.draw"]),
                uuid=_available(row["uuid"]),
                memory_total_mib=_whole(row["memory.total"]),
            )
            for row in rows
        )
    except (KeyError, ValueError):
        return ()


def parse_hl_smi_csv(text: str) -> list[dict[str, str]]:
    """hl-smi's `-f csv` output as one dict per device, keyed by field name without its unit
    (`memory.total [MiB]` → `memory.total`); values stripped. ValueError when a row has the wrong width. Pure."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header, *rows = list(csv.reader(lines, skipinitialspace=True))
    names = [re.sub(r"\s*\[.*\]$", "", name.strip()) for name in header]
    parsed = []
    for row in rows:
        if len(row) != len(names):
            raise ValueError(f"expected {len(names)} fields, got {len(row)}: {','.join(row)!r}")
        parsed.append({name: value.strip() for name, value in zip(names, row, strict=True)})
    return parsed


def gaudi_name(board: str) -> str:
    """`HL-225` → `GAUDI2`, `HL-325L` → `GAUDI3`, `HL-205` → `GAUDI`; anything else as printed. Pure."""
    text = board.strip()
    if _GAUDI3.match(text):
        return "GAUDI3"
    for pattern, product in _PRODUCTS:
        if pattern.match(text):
            return product
    return text


def _query(run: Runner | None, fields: Sequence[str]) -> tuple[list[dict[str, str]], DetectResult | None]:
    """hl-smi's answer to a query, or the DetectResult that explains why there is none."""
    if run is None:
        path = shutil.which("hl-smi")
        if path is None:
            return [], DetectResult(info=(NO_TOOL_INFO,))
        run = _subprocess_runner(path)
    try:
        status, out, err = run(["hl-smi", "-Q", ",".join(fields), "-f", "csv"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], DetectResult(warnings=(_failure_warning(str(exc)),))
    if status != 0:
        said = (err.strip() or out.strip() or f"exit status {status}").splitlines()[0]
        return [], DetectResult(warnings=(_failure_warning(said),))
    try:
        return parse_hl_smi_csv(out), None
    except ValueError as exc:
        return [], DetectResult(warnings=(_failure_warning(f"output not understood: {exc}"),))


def _subprocess_runner(path: str) -> Runner:
    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        done = subprocess.run(
            [path, *argv[1:]], capture_output=True, text=True, timeout=HL_SMI_TIMEOUT_S, check=False
        )
        return done.returncode, done.stdout, done.stderr

    return run


def _failure_warning(what: str) -> str:
    return f"Intel Gaudi: hl-smi failed: {what} — accelerators on this host are not usable until it is fixed"


def _device(row: dict[str, str], sysfs_root: str) -> GpuDevice:
    bus_id = row["bus_id"]
    return GpuDevice(
        index=int(row["index"]),
        vendor="intel",
        name=gaudi_name(row["name"]),
        memory_mib=_whole(row["memory.total"]) or 0,
        uuid=_available(row.get("uuid", "")),
        serial=_available(row.get("serial", "")),
        pci_bus_id=bus_id,
        numa_node=read_numa_node(bus_id, sysfs_root),
        driver_version=_available(row.get("driver_version", "")),
        pcie_root=read_pcie_root(bus_id, sysfs_root),
    )


def _available(value: str) -> str:
    return "" if value.upper() in ("N/A", "[N/A]") else value


def _number(value: str) -> float | None:
    """`"93 W"` → 93.0, `"27 C"` → 27.0, `"N/A"` → None."""
    match = _NUMBER.match(value.strip())
    return float(match.group()) if match else None


def _whole(value: str) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None
