"""Contract packages: a folder (or its archive) with a ``meridian.json`` manifest.

Manifest::

    {"name": "asset-transfer", "version": "1.0", "entry": "asset_transfer:AssetTransfer"}

``entry`` is ``module:Class``, the module importable from the package root. The
package id is ``NAME:SHA256`` where the digest covers every file's relative path and
content (sorted), so the same sources give the same id whether installed from the
folder or from the archive that ``meridian contract package`` writes. Archives are
deterministic tar.gz (sorted, zeroed times and owners) and are checked on install:
regular files only, no absolute or ``..`` paths, bounded sizes.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import codec
from ..crypto.hashing import compute_digest
from ..errors import InvalidInput, NotFound

MANIFEST = "meridian.json"
MAX_PACKAGE_BYTES = 8 * 2**20
MAX_PACKAGE_FILES = 512
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ENTRY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
_SKIP = ("__pycache__", ".pyc", ".DS_Store")


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    entry: str

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        d = codec.decode(raw, max_bytes=64 * 1024, what=MANIFEST)
        if not isinstance(d, dict):
            raise InvalidInput(f"{MANIFEST} must be a JSON object", code="bad_package")
        name, version, entry = d.get("name"), d.get("version"), d.get("entry")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidInput(
                f"{MANIFEST}: name must match {_NAME_RE.pattern}", code="bad_package"
            )
        if not isinstance(version, str) or not 0 < len(version) <= 32:
            raise InvalidInput(f"{MANIFEST}: version must be 1..32 characters", code="bad_package")
        if not isinstance(entry, str) or not _ENTRY_RE.match(entry):
            raise InvalidInput(f"{MANIFEST}: entry must be 'module:Class'", code="bad_package")
        return cls(name, version, entry)


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    package_id: str
    manifest: Manifest
    path: Path


def _read_folder(folder: Path) -> dict[str, bytes]:
    if not (folder / MANIFEST).is_file():
        raise InvalidInput(
            f"{folder} has no {MANIFEST}",
            code="bad_package",
            hint="add a manifest with name, version and entry",
        )
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if any(part in rel for part in _SKIP) or path.is_dir():
            continue
        if path.is_symlink() or not path.is_file():
            raise InvalidInput(f"{rel}: only regular files may be packaged", code="bad_package")
        files[rel] = path.read_bytes()
    _check_size(files)
    return files


def _check_size(files: dict[str, bytes]) -> None:
    if len(files) > MAX_PACKAGE_FILES:
        raise InvalidInput(
            f"a package may hold at most {MAX_PACKAGE_FILES} files", code="bad_package"
        )
    if sum(len(b) for b in files.values()) > MAX_PACKAGE_BYTES:
        raise InvalidInput(
            f"a package may hold at most {MAX_PACKAGE_BYTES} bytes", code="bad_package"
        )


def compute_package_id(files: dict[str, bytes]) -> str:
    """``NAME:SHA256`` over the sorted (path, content digest) listing."""
    manifest = Manifest.parse(files[MANIFEST])
    listing = [[path, compute_digest(files[path]).hex()] for path in sorted(files)]
    return f"{manifest.name}:{compute_digest(codec.encode(listing)).hex()}"


def build_archive(folder: Path) -> tuple[str, bytes]:
    """(package id, deterministic tar.gz bytes) of a package folder."""
    files = _read_folder(folder)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[path]))
    compressed = gzip.compress(raw.getvalue(), mtime=0)
    return compute_package_id(files), compressed


def read_archive(data: bytes) -> dict[str, bytes]:
    """Files of an archive, refusing anything but bounded regular files at safe paths."""
    if len(data) > MAX_PACKAGE_BYTES:
        raise InvalidInput("package archive too large", code="bad_package")
    raw = _inflate(data, limit=2 * MAX_PACKAGE_BYTES)
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar.getmembers():
                _check_member(member)
                if member.name in files:
                    raise InvalidInput(
                        f"{member.name!r} appears twice in the package", code="bad_package"
                    )
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise InvalidInput(f"{member.name}: unreadable", code="bad_package")
                files[member.name] = extracted.read()
    except tarfile.TarError as exc:
        raise InvalidInput(f"package archive is corrupt: {exc}", code="bad_package") from exc
    if MANIFEST not in files:
        raise InvalidInput(f"package has no {MANIFEST}", code="bad_package")
    _check_size(files)
    _check_tree(files)
    return files


def _inflate(data: bytes, *, limit: int) -> bytes:
    """Gunzip at most ``limit`` bytes; refuse (without inflating further) beyond that."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = bytearray()
    pending = data
    try:
        while pending and not inflater.eof:
            out += inflater.decompress(pending, 2**20)
            pending = inflater.unconsumed_tail
            if len(out) > limit:
                raise InvalidInput("package archive expands too large", code="bad_package")
    except zlib.error as exc:
        raise InvalidInput("package is not a gzip archive", code="bad_package") from exc
    if not inflater.eof:
        raise InvalidInput("package archive is truncated", code="bad_package")
    return bytes(out)


def _check_member(member: tarfile.TarInfo) -> None:
    if not member.isfile():
        raise InvalidInput(f"{member.name}: only regular files allowed", code="bad_package")
    _check_path(member.name)


def _check_path(name: str) -> None:
    """One spelling per file: relative, normalised, no ``.``/``..``/empty segments."""
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or path.as_posix() != name
        or any(part in (".", "..") for part in name.split("/"))
    ):
        raise InvalidInput(
            f"{name!r}: unsafe or non-canonical path in package",
            code="bad_package",
            hint="use plain relative paths like pkg/mod.py",
        )


def _check_tree(files: dict[str, bytes]) -> None:
    """No file may also be a directory of another (``a`` and ``a/b``)."""
    dirs = {str(parent) for name in files for parent in PurePosixPath(name).parents}
    clash = sorted(set(files) & dirs)
    if clash:
        raise InvalidInput(f"{clash[0]!r} is both a file and a directory", code="bad_package")


class PackageStore:
    """Installed packages of a node: ``<root>/<package id>/`` folders, written once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, package_id: str) -> Path:
        return self.root / package_id.replace(":", "-")

    def install(self, archive: bytes) -> InstalledPackage:
        """Install an archive (idempotent: the same content gives the same id)."""
        files = read_archive(archive)
        package_id = compute_package_id(files)
        target = self._dir(package_id)
        if not target.exists():
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".install-"))
            tmp.chmod(0o755)  # sandboxed workers read it as an unprivileged uid
            try:
                for rel, content in files.items():
                    dest = tmp / rel
                    dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    dest.write_bytes(content)
                    dest.chmod(0o644)
                try:
                    tmp.rename(target)
                except OSError:
                    if not (target / MANIFEST).is_file():  # not a concurrent identical install
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return self.get(package_id)

    def get(self, package_id: str) -> InstalledPackage:
        target = self._dir(package_id)
        if not (target / MANIFEST).is_file():
            raise NotFound(
                f"package {package_id} is not installed on this node",
                code="package_not_installed",
                hint="install it with 'meridian contract install'",
            )
        return InstalledPackage(
            package_id, Manifest.parse((target / MANIFEST).read_bytes()), target
        )

    def list(self) -> list[InstalledPackage]:
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not (path / MANIFEST).is_file():
                continue
            name, _, digest = path.name.rpartition("-")
            found.append(self.get(f"{name}:{digest}"))
        return found
