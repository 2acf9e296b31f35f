"""The frozen `gpuctl` command (PyInstaller's entry point). `gpuctl dev` runs an agent in this process, whose jobs'
supervisors start as `gpuctl __shim__ ...` (a frozen command has no Python of its own to start them with)."""

import sys

SHIM_ARG = "__shim__"  # agent.runtime.process.SHIM_ARG; not imported, so that start-up stays light

if len(sys.argv) > 1 and sys.argv[1] == SHIM_ARG:
    from agent.runtime.shim import entry as shim

    sys.exit(shim(sys.argv[2:]))

from cli.main import main  # noqa: E402

main()
