"""The frozen `gpuctl` command (PyInstaller's entry point). `gpuctl dev` runs an agent in this process, whose jobs'
supervisors start as `gpuctl __shim__ ...` (a frozen command has no Python of its own to start them with), and
the commands of `gpuctl exec` into them as `gpuctl __exec__ ...`."""

import sys

SHIM_ARG = "__shim__"  # agent.runtime.process.SHIM_ARG; not imported, so that start-up stays light
EXEC_ARG = "__exec__"  # agent.runtime.exec_helper.EXEC_ARG

if len(sys.argv) > 1 and sys.argv[1] == SHIM_ARG:
    from agent.runtime.shim import entry as shim

    sys.exit(shim(sys.argv[2:]))
if len(sys.argv) > 1 and sys.argv[1] == EXEC_ARG:
    from agent.runtime.exec_helper import main as exec_helper

    sys.exit(exec_helper(sys.argv[2:]))

from cli.main import main  # noqa: E402

main()
