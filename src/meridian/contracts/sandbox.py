"""How a contract worker process is launched: bubblewrap, an unprivileged uid, rlimits.

Two modes, chosen once per pool (:func:`resolve_sandbox_mode`):

``bwrap``
    The worker runs under bubblewrap in fresh IPC, PID, network, UTS and cgroup
    namespaces (no network at all), with a read-only view of only what it needs:
    ``/usr`` (and the host's ``/lib``, ``/lib64``, ``/bin`` symlinks), the Python
    installation, the virtualenv, the directory ``meridian`` is imported from and the
    contract package (at :data:`CONTRACT_MOUNT`); ``/tmp`` is a private tmpfs. When the
    node runs as root the worker drops to uid/gid 65534 with no capabilities
    (``setpriv``), so root-only files stay unreadable even inside the binds; otherwise
    bubblewrap's user namespace is used. Killing bubblewrap tears the namespace down.
``none``
    A plain child process with a cleared environment. Only for development or hosts
    without bubblewrap; ``auto`` falls back to it with a logged warning.

In both modes the worker applies the rlimits of :class:`SandboxLimits` to itself
before loading contract code and installs an audit hook (see :mod:`.worker`).

Because the worker is unprivileged under bubblewrap, the contract package directory
must be world-readable (directories 0755, files 0644).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

import meridian

from ..errors import ContractFailure, InvalidInput, Unavailable

log = logging.getLogger("meridian.contracts")

MODES = ("auto", "bwrap", "none")
CONTRACT_MOUNT = "/contract"
NOBODY_ID = 65534
PROBE_TIMEOUT_S = 15.0
HOST_SYMLINKS = ("/bin", "/lib", "/lib64", "/sbin")

# Run by ``python -I -c``: makes the node's own meridian importable without relying on
# the environment (first on sys.path, ahead of any other copy an editable install puts
# there), then hands over to the worker main with the remaining arguments.
_BOOTSTRAP = (
    "import sys; r = sys.argv[1]; r in sys.path or sys.path.insert(0, r); "
    "import meridian.contracts.worker as w; w.main(sys.argv[2:])"
)


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource limits of one worker process, and the sandbox mode.

    ``call_timeout_s`` is a call's time budget (wall clock). The worker ends a call
    whose own time (its turns plus its waits for the node's answers) passes it, but
    the worker runs the contract's code and cannot be trusted to: the node's guard is
    its own deadline per batch, (n + 1) * ``call_timeout_s`` for n calls from when the
    batch was sent, whatever the worker sends meanwhile (so 2 * ``call_timeout_s`` for
    a call alone, as retried and nested calls are), and ``call_timeout_s`` of silence
    from a worker that owes the node a frame (see :mod:`.pool`). ``cpu_seconds`` is a
    cumulative RLIMIT_CPU backstop per worker; workers are replaced after
    ``max_calls_per_worker`` calls.
    """

    call_timeout_s: float = 5.0
    memory_bytes: int = 512 * 2**20
    cpu_seconds: int = 3600
    open_files: int = 64
    max_calls_per_worker: int = 20_000
    mode: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInput(f"sandbox mode must be one of {MODES}, not {self.mode!r}")
        numbers = (
            self.call_timeout_s,
            self.memory_bytes,
            self.cpu_seconds,
            self.open_files,
            self.max_calls_per_worker,
        )
        if any(n <= 0 for n in numbers):
            raise InvalidInput("sandbox limits must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class WorkerCommand:
    """How to start one worker: argv and working directory (on the host)."""

    argv: tuple[str, ...]
    cwd: str


def get_meridian_root() -> Path:
    """The directory the ``meridian`` package is imported from."""
    return Path(meridian.__file__).resolve().parents[1]


def compute_worker_command(
    mode: str, package_dir: Path, entry: str, limits: SandboxLimits
) -> WorkerCommand:
    """The command that starts a worker serving ``entry`` from ``package_dir``."""
    limits_json = orjson.dumps(limits.to_dict()).decode()
    if mode == "bwrap":
        tail = [CONTRACT_MOUNT, entry, limits_json]
        argv = [*compute_bwrap_prefix(package_dir), *_python_argv(), *tail]
        return WorkerCommand(tuple(argv), "/")
    argv = [*_python_argv(), str(package_dir), entry, limits_json]
    return WorkerCommand(tuple(argv), str(package_dir))


def compute_worker_env() -> dict[str, str]:
    """The whole environment of a worker (nothing of the node's leaks through)."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _python_argv() -> list[str]:
    return [sys.executable, "-I", "-B", "-X", "utf8", "-c", _BOOTSTRAP, str(get_meridian_root())]


def compute_bwrap_prefix(package_dir: Path | None) -> list[str]:
    """``bwrap … --`` (plus ``setpriv …`` as root) up to the interpreter's argv."""
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    as_root = os.geteuid() == 0
    argv = [
        bwrap,
        *_bwrap_namespace_args(as_root),
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    for name, value in compute_worker_env().items():
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr", *_host_symlink_args()]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    argv += _bind_args(_runtime_paths())
    if package_dir is not None:
        argv += ["--ro-bind", str(package_dir), CONTRACT_MOUNT, "--chdir", CONTRACT_MOUNT]
    else:
        argv += ["--chdir", "/"]
    argv.append("--")
    if as_root:
        argv += _setpriv_args()
    return argv


def _bwrap_namespace_args(as_root: bool) -> list[str]:
    if not as_root:
        return ["--unshare-all"]
    # As root a user namespace would map only uid 0, and setpriv could not drop to
    # 65534 inside it: unshare everything else, keep only the caps setpriv needs.
    return [
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_SETUID",
        "--cap-add",
        "CAP_SETGID",
        "--cap-add",
        "CAP_SETPCAP",
    ]


def _setpriv_args() -> list[str]:
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [
        setpriv,
        f"--reuid={NOBODY_ID}",
        f"--regid={NOBODY_ID}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def _host_symlink_args() -> list[str]:
    args: list[str] = []
    for path in HOST_SYMLINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _runtime_paths() -> list[str]:
    """Python installation, virtualenv and meridian's directory, as on the host."""
    paths: list[str] = []
    for p in (sys.base_prefix, sys.prefix, str(get_meridian_root())):
        for variant in (os.path.abspath(p), os.path.realpath(p)):
            if variant not in paths:
                paths.append(variant)
    return paths


def _bind_args(paths: Iterable[str]) -> list[str]:
    """Read-only binds at the same paths, parents created world-traversable."""
    covered = ["/usr"]
    binds = []
    for path in sorted(set(paths), key=len):
        if not any(_is_within(path, c) for c in covered):
            binds.append(path)
            covered.append(path)
    parents = sorted({str(p) for b in binds for p in Path(b).parents if str(p) != "/"}, key=len)
    args: list[str] = []
    for parent in parents:
        if not any(_is_within(parent, c) for c in covered):
            args += ["--perms", "0755", "--dir", parent]
    for path in binds:
        args += ["--ro-bind", path, path]
    return args


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@functools.cache
def probe_bwrap() -> str | None:
    """None if a bubblewrap worker can start here, else why not (run once a process)."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian package 'bubblewrap')"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv is not installed (Debian package 'util-linux')"
    argv = [
        *compute_bwrap_prefix(None),
        sys.executable,
        "-I",
        "-B",
        "-c",
        "import sys; sys.path.append(sys.argv[1]); import meridian.contracts.api",
        str(get_meridian_root()),
    ]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            env=compute_worker_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap probe failed: {exc}"
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[-500:]
        return f"bwrap probe exited with {done.returncode}: {err}"
    return None


def resolve_sandbox_mode(requested: str) -> str:
    """``"bwrap"`` or ``"none"``; raises Unavailable if bwrap is required but unusable."""
    if requested == "none":
        log.warning("contract sandbox disabled (mode 'none'): contracts run unconfined")
        return "none"
    problem = probe_bwrap()
    if problem is None:
        return "bwrap"
    if requested == "bwrap":
        raise Unavailable(
            f"the bubblewrap contract sandbox is not usable: {problem}",
            code="sandbox_unavailable",
            hint="install bubblewrap or set the sandbox mode to 'auto'",
        )
    log.warning(
        "contract sandbox falling back to mode 'none' (no filesystem or network "
        "isolation, only rlimits and an audit hook): %s",
        problem,
    )
    return "none"


def validate_package_dir(mode: str, package_dir: Path) -> None:
    """Raise contract_load_failed unless the worker will be able to read the package."""
    if not package_dir.is_dir():
        raise ContractFailure(
            f"contract package directory {package_dir} does not exist", code="contract_load_failed"
        )
    if mode == "bwrap" and os.geteuid() == 0 and package_dir.stat().st_mode & 0o005 != 0o005:
        raise ContractFailure(
            f"contract package directory {package_dir} is not world-readable",
            code="contract_load_failed",
            hint="the sandboxed worker runs as uid 65534: use 0755 directories, 0644 files",
        )
