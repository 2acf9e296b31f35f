"""`gpuctl --version` start-up time: the packaged (PyInstaller) CLI against the editable install.

    python bench/cli_startup.py OUT_DIR [--runs N]

OUT_DIR is what `packaging/build OUT_DIR` wrote; the .deb is unpacked into a temporary folder (the bundle is
relocatable) and both commands run N times. Prints the median and the best run of each, in ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def timings_ms(command: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall time of each of `runs` calls; one call first, untimed, warms the page cache."""
    subprocess.run(command, env=env, check=True, capture_output=True)
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    (deb,) = args.out_dir.glob("gpuctl_*.deb")
    editable = shutil.which("gpuctl")
    assert editable, "no editable `gpuctl` on PATH (pip install -e .)"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        packaged = str(Path(tmp) / "opt/gpuctl/cli/gpuctl")
        for label, command in (("package", [packaged, "--version"]), ("editable", [editable, "--version"])):
            ms = timings_ms(command, args.runs)
            print(
                f"{label:9} median {statistics.median(ms):6.1f} ms   best {min(ms):6.1f} ms   ({args.runs} runs)"
            )


if __name__ == "__main__":
    main()
