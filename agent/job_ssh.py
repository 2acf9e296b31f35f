"""Password-less ssh between the nodes of one multi-node job, so that `ssh PEER_IP` and `mpirun --hostfile
$GPUCTL_MPI_HOSTFILE` work as on a cluster made for MPI.

Every node derives the same two ed25519 keys from the job's seed, which the coordinator sends with each
node's allocation (an HMAC of the job id under its own key, so no two jobs share one and no store holds it):
the job's user key (its private half in each node's `~/.ssh/id_ed25519`, its public half the only line of
`authorized_keys`) and the job's host key (every node's sshd presents it, and `known_hosts` pins it for the
peers' addresses at the job's port, so no host key is ever accepted blindly). No key crosses the network.

Each node runs an sshd on its internal IP at the job's port (the coordinator's choice, unlike any other live
job's on the same hosts), started first thing by the job's own script, so it runs as the job's user, in the
job's cgroups and process group, and stops with the job. Another job cannot log in: its key is another, and
this job's files are in a work dir only this job's user can enter.

A plain-process job's uid has no passwd entry, and OpenSSH (client and server) will not run for a user it
cannot look up: nss_wrapper (Debian's libnss-wrapper, preloaded) gives the job a passwd of its own whose one
added user, `gpuctl-job` on every node, has the work dir as home; its sessions get the job's environment
(`~/.ssh/environment`). In a container, the image's own sshd runs (as dstack's images have one), as the
image's user, with the files in /workflow/.ssh; its sessions get the container's environment and the image's
PATH. Without sshd or nss_wrapper on a host, or sshd in an image, the job runs all the same, and its log says
first thing why its nodes cannot ssh to each other.

A dev environment (`type: dev-environment`) runs the same sshd, on one node: it listens on loopback only,
where the agent's channel reaches it (agent/stream_ssh.py adds each user's key to `authorized_keys` first),
and it also allows local forwards (VS Code's Remote-SSH) and sftp (scp).
"""

from __future__ import annotations

import glob
import os
import secrets
import shlex
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from shared.files import fresh_folder, write_fresh
from shared.job_keys import JOB_LOGIN, job_keys
from shared.spec.dev_env import is_dev
from shared.wire import AllocationSpec

SSHD = "/usr/sbin/sshd"
SSH_DIR = ".ssh"  # in the job's work dir, its home
LOGIN = JOB_LOGIN
NSS_WRAPPER_GLOBS = (
    "/usr/lib/*/libnss_wrapper.so",
    "/usr/lib64/libnss_wrapper.so",
    "/usr/lib/libnss_wrapper.so",
)
LOOPBACK = "127.0.0.1"
AUTHORIZED_KEYS = "authorized_keys"
CONNECT_ATTEMPTS = 30  # one a second: the nodes start independently, a peer's sshd may not listen yet


def wants_ssh(alloc: AllocationSpec) -> bool:
    """Whether the allocation runs an sshd: a node of a job whose nodes ssh to each other, or a dev
    environment (which people reach over the channel: `gpuctl ssh`)."""
    return (alloc.nodes_num > 1 or is_dev(alloc.spec)) and alloc.ssh_port > 0 and bool(alloc.ssh_seed)


def ssh_files(alloc: AllocationSpec, home: str, in_container: bool) -> dict[str, tuple[str, int]]:
    """The files of `~/.ssh` (name: (text, mode)) for a node whose job sees its home at `home`. Pure."""
    keys = job_keys(alloc.ssh_seed)
    ssh = f"{home}/{SSH_DIR}"
    peers = [ip for ip in alloc.nodes_ips if ip]
    known = "".join(f"[{ip}]:{alloc.ssh_port} {keys.host_public}\n" for ip in peers)
    client = (
        f"Host {' '.join(peers)}\n    Port {alloc.ssh_port}\n    IdentityFile {ssh}/id_ed25519\n"
        f"    IdentitiesOnly yes\n    UserKnownHostsFile {ssh}/known_hosts\n    StrictHostKeyChecking yes\n"
        f"    ConnectionAttempts {CONNECT_ATTEMPTS}\n"
        if peers
        else ""
    )
    # A dev environment's sshd listens on loopback only: the agent's channel reaches it there, no one else
    own_ip = alloc.nodes_ips[alloc.node_rank] if alloc.node_rank < len(alloc.nodes_ips) else LOOPBACK
    # VS Code's Remote-SSH reaches its server through a local forward; scp and sftp need the sftp server
    dev = is_dev(alloc.spec)
    forwarding = "local" if dev else "no"
    server = (
        f"Port {alloc.ssh_port}\n"
        + f"ListenAddress {own_ip}\n"
        + f"HostKey {ssh}/ssh_host_ed25519_key\nAuthorizedKeysFile {ssh}/authorized_keys\nPidFile none\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"AllowTcpForwarding {forwarding}\nX11Forwarding no\nLogLevel ERROR\nPermitUserEnvironment yes\n"
        + ("Subsystem sftp internal-sftp\n" if dev else "")
        + ("PermitRootLogin prohibit-password\n" if in_container else "")
    )
    return {
        "id_ed25519": (keys.user_private, 0o600),
        "id_ed25519.pub": (keys.user_public + "\n", 0o644),
        AUTHORIZED_KEYS: (keys.user_public + "\n", 0o600),
        "known_hosts": (known, 0o644),
        "config": (client, 0o600),
        "ssh_host_ed25519_key": (keys.host_private, 0o600),
        "sshd_config": (server, 0o600),
    }


def write_ssh_files(files: Mapping[str, tuple[str, int]], work_dir: Path) -> None:
    """Write `~/.ssh` into the node's work dir (the caller gives it to the job's user). The job's `files:` or
    `repos:` may have put a link there, at the folder or one of its files: it is replaced, never followed."""
    folder = work_dir / SSH_DIR
    fresh_folder(folder)
    folder.chmod(0o700)  # before any key is in it (a `files:` upload may have brought the folder)
    for name, (text, mode) in files.items():
        write_fresh(folder / name, text.encode(), mode)


def nss_wrapper() -> str | None:
    """The path of libnss_wrapper.so on this host, or None."""
    return next((found for pattern in NSS_WRAPPER_GLOBS for found in sorted(glob.glob(pattern))), None)


def login_files(uid: int, gid: int, home: str, passwd: str, group: str) -> dict[str, tuple[str, int]]:
    """nss_wrapper's passwd and group for a plain-process job: the job's user `gpuctl-job` first (so its uid
    is found under that name), then the host's own users and groups. Pure."""
    return {
        "passwd": (f"{LOGIN}:x:{uid}:{gid}:gpuctl job:{home}:/bin/sh\n{passwd}", 0o644),
        "group": (f"{LOGIN}:x:{gid}:\n{group}", 0o644),
    }


def process_env(env: Mapping[str, str], home: str, library: str) -> dict[str, str]:
    """The variables that give a plain-process job (and each of its ssh sessions) its passwd entry. Pure."""
    preload = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    ssh = f"{home}/{SSH_DIR}"
    return {
        "LD_PRELOAD": preload,
        "NSS_WRAPPER_PASSWD": f"{ssh}/passwd",
        "NSS_WRAPPER_GROUP": f"{ssh}/group",
        "USER": LOGIN,
        "LOGNAME": LOGIN,
    }


def session_environment(env: Mapping[str, str]) -> str:
    """`~/.ssh/environment`: the job's variables for the sessions its peers open (mpirun's daemons), but
    those whose value spans lines, which the file cannot hold (GPUCTL_NODES_IPS). Pure."""
    return "".join(f"{k}={v}\n" for k, v in env.items() if "\n" not in v)


def process_prefix(home: str) -> str:
    """The job script's first line: this node's sshd, in the background, logging only errors to the job's
    log; it ends with the job's process group."""
    config = shlex.quote(f"{home}/{SSH_DIR}/sshd_config")
    return f"{SSHD} -D -e -f {config} &\n"


def container_ssh_files(
    alloc: AllocationSpec, home: str, env: Mapping[str, str]
) -> dict[str, tuple[str, int]]:
    """A container node's `.ssh` (`home`: the work dir as the container sees it), with its sessions'
    environment (`env`: the container's). Pure."""
    return {
        **ssh_files(alloc, home, in_container=True),
        "environment": (session_environment(env), 0o600),
    }


def container_prefix(home: str) -> str:
    """The container script's first lines: the image's sshd if it has one (else why not, in the log), and
    the job's client config and sessions' environment where the image's user's ssh and sshd read them
    (existing ones are kept). The environment gets the image's PATH, which sshd would otherwise replace with
    its own (the image's mpirun would then not find its orted on the other nodes)."""
    ssh = f"{home}/{SSH_DIR}"
    return (
        f"if [ -x {SSHD} ]; then mkdir -p /run/sshd && {SSHD} -D -e -f {ssh}/sshd_config &\n"
        f"else {off_notice(f'the image has no {SSHD} (openssh-server)')}fi\n"
        f'[ -e "$HOME/.ssh/config" ] || {{ mkdir -p "$HOME/.ssh" && cp {ssh}/config "$HOME/.ssh/config"; }}\n'
        f'[ -e "$HOME/.ssh/environment" ] || (umask 077 && mkdir -p "$HOME/.ssh"'
        f' && {{ cat {ssh}/environment; echo "PATH=$PATH"; }} > "$HOME/.ssh/environment")\n'
    )


def prepare_process(
    alloc: AllocationSpec, env: Mapping[str, str], work_dir: Path, uid: int, gid: int
) -> tuple[dict[str, str], str]:
    """Write a plain-process node's `~/.ssh` (keys, sshd and client configs, its passwd for nss_wrapper,
    its sessions' environment) into its work dir; answers the job's environment and its script's first
    line (this node's sshd, or why there is none)."""
    library = nss_wrapper()
    if not Path(SSHD).exists():
        return dict(env), off_notice(f"this host has no {SSHD} (openssh-server)")
    if library is None:
        return dict(env), off_notice("this host has no libnss_wrapper.so (libnss-wrapper) for the job's uid")
    home = str(work_dir)
    env = {**env, **process_env(env, home, library)}
    passwd, group = Path("/etc/passwd").read_text(), Path("/etc/group").read_text()
    files = {
        **ssh_files(alloc, home, in_container=False),
        **login_files(uid, gid, home, passwd, group),
        "environment": (session_environment(env), 0o600),
    }
    write_ssh_files(files, work_dir)
    return env, process_prefix(home)


def off_notice(why: str) -> str:
    """The job script's first line when its nodes cannot ssh to each other here: its log says why."""
    return f"echo {shlex.quote(f'gpuctl: no ssh between the nodes of this job: {why}')} >&2\n"


def authorize(work_dir: Path, public_key: str) -> bool:
    """Let `public_key` log in to the job's sshd (a person's, `gpuctl ssh`), beside the job's own key.
    Answers whether it was added (False: already there). The agent's event loop only. Raises OSError as
    `_rewrite_keys` does."""
    return _rewrite_keys(work_dir, lambda lines: None if public_key in lines else [*lines, public_key])


def unauthorize(work_dir: Path, public_key: str) -> None:
    """Take back a key `authorize` added, once its last session ended. Raises OSError as `_rewrite_keys`
    does."""
    _rewrite_keys(work_dir, lambda lines: [line for line in lines if line != public_key])


def _rewrite_keys(work_dir: Path, change: Callable[[list[str]], list[str] | None]) -> bool:
    """Write the job's `authorized_keys` anew with `change(its lines)` (None: no change); answers whether it
    wrote. The job's user may have put links in its `.ssh` since it started: none is followed (a link to
    root's authorized_keys would have the agent, root, let the person in to the host), the file is written
    anew beside the old one and renamed over it, keeping its owner and mode. Raises OSError when `.ssh` or
    the file is not what the agent made (a link, gone)."""
    folder = os.open(work_dir / SSH_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        with os.fdopen(os.open(AUTHORIZED_KEYS, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)) as old:
            held = os.fstat(old.fileno())
            if not stat.S_ISREG(held.st_mode):
                raise OSError(f"{SSH_DIR}/{AUTHORIZED_KEYS} is not a file")
            lines = old.read().splitlines()
        changed = change(lines)
        if changed is None or changed == lines:
            return False
        temporary = f".{AUTHORIZED_KEYS}.{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(temporary, flags, 0o600, dir_fd=folder), "w") as new:
            os.fchown(new.fileno(), held.st_uid, held.st_gid)
            os.fchmod(new.fileno(), stat.S_IMODE(held.st_mode))
            new.write("".join(f"{line}\n" for line in changed))
        os.rename(temporary, AUTHORIZED_KEYS, src_dir_fd=folder, dst_dir_fd=folder)
        return True
    finally:
        os.close(folder)
