"""Contract packages: deterministic archives, stable ids, safe installs."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from meridian import codec
from meridian.contracts.package import (
    MANIFEST,
    MAX_PACKAGE_BYTES,
    Manifest,
    PackageStore,
    build_archive,
    compute_package_id,
    read_archive,
)
from meridian.errors import InvalidInput, NotFound

MANIFEST_DICT = {"name": "asset-transfer", "version": "1.0", "entry": "asset_transfer:Asset"}
SOURCES = {
    MANIFEST: codec.encode(MANIFEST_DICT),
    "asset_transfer.py": b"class Asset:\n    pass\n",
    "lib/helpers.py": b"def helper():\n    return 1\n",
    "lib/__init__.py": b"",
}


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "pkg", SOURCES)


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)


def _file(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), content


def _archive(files: dict[str, bytes]) -> bytes:
    return _tar_gz([_file(name, content) for name, content in files.items()])


def _bad_package(data: bytes, code: str | None = "bad_package") -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        read_archive(data)
    if code is not None:
        assert exc.value.code == code
    return exc.value


# ---------------------------------------------------------------------------- archives


def test_build_archive_is_deterministic(folder: Path, tmp_path: Path) -> None:
    first_id, first = build_archive(folder)
    second_id, second = build_archive(folder)
    assert (first_id, first) == (second_id, second)

    copy = shutil.copytree(folder, tmp_path / "copy")
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (copy / "asset_transfer.py").chmod(0o600)
    assert build_archive(copy) == (first_id, first)


def test_package_id_is_the_same_from_folder_and_archive(folder: Path) -> None:
    package_id, archive = build_archive(folder)
    files = read_archive(archive)
    assert files == SOURCES
    assert compute_package_id(files) == package_id
    assert compute_package_id(dict(SOURCES)) == package_id
    name, _, digest = package_id.partition(":")
    assert name == "asset-transfer"
    assert len(digest) == 64 and digest == digest.lower()


def test_package_id_changes_with_content_and_paths(folder: Path, tmp_path: Path) -> None:
    package_id, _ = build_archive(folder)
    changed = _write_folder(tmp_path / "changed", {**SOURCES, "lib/helpers.py": b"# v2\n"})
    assert build_archive(changed)[0] != package_id
    moved = dict(SOURCES)
    moved["lib/other.py"] = moved.pop("lib/helpers.py")
    assert compute_package_id(moved) != package_id


def test_build_archive_skips_caches(folder: Path) -> None:
    package_id, archive = build_archive(folder)
    _write_folder(
        folder,
        {
            "__pycache__/asset_transfer.cpython-311.pyc": b"\x00junk",
            "lib/__pycache__/helpers.cpython-311.pyc": b"\x00junk",
        },
    )
    assert build_archive(folder) == (package_id, archive)


def test_archive_members_are_regular_files_with_zeroed_metadata(folder: Path) -> None:
    _, archive = build_archive(folder)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(SOURCES)
    for m in members:
        assert m.isfile()
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_invalid_folder_without_manifest(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "pkg", {"a.py": b""})
    with pytest.raises(InvalidInput) as exc:
        build_archive(folder)
    assert exc.value.code == "bad_package"


def test_invalid_folder_with_symlink(folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    (folder / "link.txt").symlink_to(secret)
    with pytest.raises(InvalidInput) as exc:
        build_archive(folder)
    assert exc.value.code == "bad_package"


# ---------------------------------------------------------------------------- manifests


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Asset"},
        {"name": ""},
        {"name": "-asset"},
        {"name": "a" * 65},
        {"name": 5},
        {"version": ""},
        {"version": "v" * 33},
        {"version": 1},
        {"entry": "asset_transfer"},
        {"entry": "asset_transfer:"},
        {"entry": "asset-transfer:Asset"},
        {"entry": "../x:Asset"},
        {"entry": None},
    ],
)
def test_invalid_manifest_fields(change: dict[str, Any], tmp_path: Path) -> None:
    raw = codec.encode({**MANIFEST_DICT, **change})
    with pytest.raises(InvalidInput) as exc:
        Manifest.parse(raw)
    assert exc.value.code == "bad_package"
    store = PackageStore(tmp_path / "packages")
    with pytest.raises(InvalidInput) as exc:
        store.install(_archive({**SOURCES, MANIFEST: raw}))
    assert exc.value.code == "bad_package"
    assert store.list() == []


@pytest.mark.parametrize("field", ["name", "version", "entry"])
def test_invalid_manifest_missing_field(field: str) -> None:
    d = dict(MANIFEST_DICT)
    del d[field]
    with pytest.raises(InvalidInput) as exc:
        Manifest.parse(codec.encode(d))
    assert exc.value.code == "bad_package"


@pytest.mark.parametrize("raw", [b"[]", b"not json", b'"name"', b'{"name": 1.5}'])
def test_invalid_manifest_not_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        Manifest.parse(raw)


def test_manifest_parse() -> None:
    assert Manifest.parse(codec.encode(MANIFEST_DICT)) == Manifest(
        "asset-transfer", "1.0", "asset_transfer:Asset"
    )


# ----------------------------------------------------------------- archive safety


@pytest.mark.parametrize("name", ["../evil.py", "lib/../../evil.py", "..", "a/.."])
def test_invalid_archive_with_parent_path(name: str) -> None:
    _bad_package(_tar_gz([*map(lambda kv: _file(*kv), SOURCES.items()), _file(name, b"x")]))


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "/tmp/x.py"])
def test_invalid_archive_with_absolute_path(name: str) -> None:
    _bad_package(_tar_gz([_file(MANIFEST, SOURCES[MANIFEST]), _file(name, b"x")]))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_invalid_archive_with_link_member(kind: bytes) -> None:
    link = tarfile.TarInfo("asset_transfer.py")
    link.type = kind
    link.linkname = "/etc/passwd"
    _bad_package(_tar_gz([_file(MANIFEST, SOURCES[MANIFEST]), (link, None)]))


@pytest.mark.parametrize("kind", [tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE])
def test_invalid_archive_with_special_member(kind: bytes) -> None:
    special = tarfile.TarInfo("lib")
    special.type = kind
    _bad_package(_tar_gz([_file(MANIFEST, SOURCES[MANIFEST]), (special, None)]))


def test_invalid_archive_without_manifest() -> None:
    _bad_package(_archive({"asset_transfer.py": b"class Asset: ...\n"}))


def test_invalid_archive_with_manifest_in_a_subfolder() -> None:
    _bad_package(_archive({f"pkg/{MANIFEST}": SOURCES[MANIFEST]}))


@pytest.mark.parametrize("data", [b"", b"not gzip at all", b"\x1f\x8b\x08\x00broken"])
def test_invalid_archive_not_gzip(data: bytes) -> None:
    _bad_package(data)


def test_invalid_archive_gzip_of_garbage() -> None:
    _bad_package(gzip.compress(b"this is not a tar archive" * 40))


def test_invalid_archive_too_large() -> None:
    _bad_package(os.urandom(MAX_PACKAGE_BYTES + 1))


def test_invalid_archive_content_too_large() -> None:
    big = os.urandom(MAX_PACKAGE_BYTES // 2 + 1)
    _bad_package(
        gzip.compress(
            _raw_tar({MANIFEST: SOURCES[MANIFEST], "a.bin": big, "b.bin": big}),
            compresslevel=0,
            mtime=0,
        )
    )


def test_invalid_archive_too_many_files() -> None:
    files = {MANIFEST: SOURCES[MANIFEST], **{f"f{i}.py": b"" for i in range(512)}}
    _bad_package(_archive(files))


def _raw_tar(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return raw.getvalue()


def test_invalid_archive_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(bytes(32 * 2**20), compresslevel=9, mtime=0)
    assert len(bomb) < 2**20
    tracemalloc.start()
    try:
        _bad_package(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_PACKAGE_BYTES


# ------------------------------------------------------------------------------ store


def test_install_get_and_list(folder: Path, tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    package_id, archive = build_archive(folder)
    installed = store.install(archive)
    assert installed.package_id == package_id
    assert installed.manifest == Manifest.parse(SOURCES[MANIFEST])
    for rel, content in SOURCES.items():
        assert (installed.path / rel).read_bytes() == content
    assert store.get(package_id) == installed
    assert store.list() == [installed]


def test_install_is_idempotent(folder: Path, tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    _, archive = build_archive(folder)
    first = store.install(archive)
    (first.path / "asset_transfer.py").chmod(0o644)
    second = store.install(archive)
    assert first == second
    assert store.list() == [first]
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []


def test_install_survives_reopen_and_lists_in_order(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "packages"
    _, first = build_archive(folder)
    other = _write_folder(
        tmp_path / "other",
        {
            MANIFEST: codec.encode({"name": "a-token", "version": "2", "entry": "tok:Token"}),
            "tok.py": b"class Token: ...\n",
        },
    )
    _, second = build_archive(other)
    PackageStore(root).install(first)
    PackageStore(root).install(second)
    listed = PackageStore(root).list()
    assert [p.manifest.name for p in listed] == ["a-token", "asset-transfer"]


def test_invalid_get_of_a_package_not_installed(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    with pytest.raises(NotFound) as exc:
        store.get("asset-transfer:" + "00" * 32)
    assert exc.value.code == "package_not_installed"
    assert store.list() == []


def test_invalid_install_leaves_nothing_behind(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    with pytest.raises(InvalidInput):
        store.install(_tar_gz([_file(MANIFEST, SOURCES[MANIFEST]), _file("../x.py", b"x")]))
    assert list(store.root.iterdir()) == []
    assert not (tmp_path / "x.py").exists()


# ------------------------------------------------------------- one spelling per file


def _sources_with(*extra: tuple[str, bytes]) -> bytes:
    return _tar_gz([*(_file(n, c) for n, c in SOURCES.items()), *(_file(n, c) for n, c in extra)])


@pytest.mark.parametrize("alias", ["./extra.py", "pkg//extra.py", "pkg/./extra.py", "pkg/"])
def test_invalid_non_canonical_member_paths(alias: str) -> None:
    """`./m.py` and `m.py` would be two id entries but one file: refuse the spelling."""
    _bad_package(_sources_with((alias, b"x = 1\n")))


def test_invalid_duplicate_member() -> None:
    _bad_package(_sources_with(("extra.py", b"GOOD = 1\n"), ("extra.py", b"EVIL = 1\n")))


def test_invalid_file_that_is_also_a_directory() -> None:
    _bad_package(_sources_with(("lib", b"a file\n"), ("lib/mod.py", b"x = 1\n")))
