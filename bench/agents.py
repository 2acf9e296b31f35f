"""Several real agents in one process: `python -m bench.agents CONFIG...`, one agent per config file.

Each agent is the product's own `run_agent` with its own state dir, certificate and mTLS connection, exactly
what `gpuctl-agent run --config CONFIG` runs; only the process is shared, so that 100 simulated hosts cost a
few interpreters instead of 100 (each idle agent process holds ~50 MiB and pays ~0.5 s of CPU to start, which
on two cores would bury the figures the bench is after). Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from agent.agent import detect, run_agent
from agent.config import load_config


async def run_all(paths: list[Path]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    configs = [load_config(path, {}) for path in paths]
    async with asyncio.TaskGroup() as group:
        agents = [group.create_task(run_agent(c, detect(c)), name=f"agent-{c.name}") for c in configs]
        await stop.wait()
        for task in agents:
            task.cancel()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run_all([Path(p) for p in sys.argv[1:]]))


if __name__ == "__main__":
    main()
