"""The frozen `gpuctl-coordinator` command (PyInstaller's entry point)."""

from coordinator.main import main

main()
