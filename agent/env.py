"""The environment a job sees: a standard PATH, HOME and LANG, its spec's variables, then the GPUCTL_* /
DSTACK_* facts (a multi-node job's rank, node count, master and peers' IPs, MPI hostfile) and the device
variables that show it exactly the GPUs of its blocks (these win over the spec, so a job cannot widen them),
and a job array's task its index. Nothing comes from the agent's own environment: its PATH may point into
root's home, and its secrets are none of the job's business."""

from __future__ import annotations

from pathlib import Path

from shared.files import write_fresh
from shared.wire import AllocationSpec, ArrayTask, Inventory

MPI_HOSTFILE = ".gpuctl_mpi_hostfile"  # in the work dir, where the job's user can read it
_VISIBLE_VAR = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    "amd": "ROCR_VISIBLE_DEVICES",
    "intel": "HABANA_VISIBLE_DEVICES",
}
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LANG = "C.UTF-8"  # present in every glibc since 2.35 and in Debian's for longer


def device_env(alloc: AllocationSpec, inventory: Inventory) -> dict[str, str]:
    """One visibility variable per GPU vendor on the host; empty where the job has none of that vendor's."""
    vendors = {g.index: g.vendor for g in inventory.gpus}
    env: dict[str, str] = {}
    for vendor in sorted(set(vendors.values())):
        mine = [str(i) for i in alloc.gpus if vendors.get(i) == vendor]
        env[_VISIBLE_VAR.get(vendor, f"{vendor.upper()}_VISIBLE_DEVICES")] = ",".join(mine)
    if "CUDA_VISIBLE_DEVICES" in env:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's indices then agree with NVML's
        if not env["CUDA_VISIBLE_DEVICES"]:
            env["NVIDIA_VISIBLE_DEVICES"] = "void"  # the NVIDIA runtime's "none", for what the job starts
    return env


def job_env(alloc: AllocationSpec, inventory: Inventory, work_dir: str) -> dict[str, str]:
    """The job's environment, the same for every runtime (a container drops PATH, HOME and LANG for its
    image's own unless the spec sets them). Pure."""
    env = {"PATH": DEFAULT_PATH, "HOME": work_dir, "LANG": DEFAULT_LANG}
    env.update(alloc.spec.env)
    gpus_per_node = str(len(alloc.gpus))
    facts = {
        "JOB_ID": alloc.job_id,
        "RUN_NAME": alloc.job_name,
        "NODE_RANK": str(alloc.node_rank),
        "NODES_NUM": str(alloc.nodes_num),
        "MASTER_NODE_IP": alloc.master_addr or "127.0.0.1",
        "NODES_IPS": "\n".join(alloc.nodes_ips)
        or alloc.master_addr
        or "127.0.0.1",  # one per line, as dstack
        "GPUS_PER_NODE": gpus_per_node,
        "GPUS_NUM": str(len(alloc.gpus) * alloc.nodes_num),
    }
    if alloc.nodes_num > 1:
        facts["MPI_HOSTFILE"] = str(Path(work_dir) / MPI_HOSTFILE)
    for name, value in facts.items():
        env[f"GPUCTL_{name}"] = value
        env[f"DSTACK_{name}"] = value
    env["GPUCTL_JOB_NAME"] = alloc.job_name
    env["GPUCTL_ALLOCATION_ID"] = alloc.id
    env["GPUCTL_BLOCKS"] = ",".join(str(b) for b in alloc.blocks)
    if inventory.simulated:
        env["GPUCTL_SIMULATED"] = "1"
    if alloc.array is not None:
        env.update(array_env(alloc.array))
    env.update(device_env(alloc, inventory))
    return env


def write_mpi_hostfile(alloc: AllocationSpec, work_dir: Path) -> None:
    """A multi-node job's MPI hostfile in its work dir: one line per node, `IP slots=GPUS` (each node has the
    GPUs of this one: a gang's nodes take alike blocks)."""
    if alloc.nodes_num > 1:
        lines = (f"{ip} slots={len(alloc.gpus)}\n" for ip in alloc.nodes_ips)
        work_dir.mkdir(parents=True, exist_ok=True)
        write_fresh(work_dir / MPI_HOSTFILE, "".join(lines).encode(), 0o644)  # a link there is not followed


def array_env(task: ArrayTask) -> dict[str, str]:
    """A task of a job array: its index and the array's shape, under our names and Slurm's (so an sbatch
    script that reads $SLURM_ARRAY_TASK_ID runs unchanged). The array id is ours, not a Slurm number."""
    return {
        "GPUCTL_ARRAY_JOB_ID": task.array_id,
        "GPUCTL_ARRAY_INDEX": str(task.index),
        "GPUCTL_ARRAY_TASK_COUNT": str(task.count),
        "SLURM_ARRAY_JOB_ID": task.array_id,
        "SLURM_ARRAY_TASK_ID": str(task.index),
        "SLURM_ARRAY_TASK_COUNT": str(task.count),
        "SLURM_ARRAY_TASK_MIN": str(task.min_index),
        "SLURM_ARRAY_TASK_MAX": str(task.max_index),
    }
