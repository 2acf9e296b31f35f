"""The frozen `gpuctl-agent` command (PyInstaller's entry point).

`gpuctl-agent __shim__ ...` runs a job's supervisor (agent/runtime/shim.py): a frozen agent has no Python of its
own to start it with. ROCm's amdsmi binding is used from the host when it is installed there.
"""

import os
import sys

SHIM_ARG = "__shim__"  # agent.runtime.process.SHIM_ARG; not imported, so that start-up stays light
EXEC_ARG = "__exec__"  # agent.runtime.exec_helper.EXEC_ARG

if len(sys.argv) > 1 and sys.argv[1] == SHIM_ARG:
    from agent.runtime.shim import entry as shim

    sys.exit(shim(sys.argv[2:]))
if len(sys.argv) > 1 and sys.argv[1] == EXEC_ARG:  # a command in a plain-process job (`gpuctl exec`)
    from agent.runtime.exec_helper import main as exec_helper

    sys.exit(exec_helper(sys.argv[2:]))

for rocm in ("/opt/rocm/share/amd_smi",):  # where ROCm installs the amdsmi package
    if os.path.isdir(rocm):
        sys.path.append(rocm)

from agent.main import main  # noqa: E402

main()
