"""Contract lifecycle through the SDK: install, approve, commit, or all at once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contracts.lifecycle import LIFECYCLE
from ..contracts.package import build_archive, compute_package_id, read_archive
from ..errors import InvalidInput
from .sync import Gateway


def load_package(source: Path) -> tuple[str, bytes]:
    """(package id, archive bytes) from a package folder or an archive file."""
    if source.is_dir():
        return build_archive(source)
    if not source.is_file():
        raise InvalidInput(
            f"{source} is neither a package folder nor an archive", code="bad_package"
        )
    archive = source.read_bytes()
    return compute_package_id(read_archive(archive)), archive


def lifecycle_call(
    gw: Gateway,
    app_name: str,
    function: str,
    name: str,
    version: str,
    sequence: int,
    package_id: str,
    policy: str,
) -> Any:
    contract = gw.app(app_name).contract(LIFECYCLE)
    return contract.submit(function, name, version, sequence, package_id, policy)


def next_sequence(gw: Gateway, app_name: str, name: str) -> int:
    for definition in gw.app(app_name).contracts():
        if definition["name"] == name:
            return int(definition["sequence"]) + 1
    return 1


def deploy(
    admins: list[Gateway],
    app_name: str,
    source: Path,
    *,
    name: str | None = None,
    policy: str = "ANY",
    install_on: Sequence[Gateway] | None = None,
) -> dict[str, Any]:
    """Install, approve as every given org admin, commit (or upgrade).

    The package is installed through ``install_on`` (default: the first admin): one
    gateway per node that hosts the app, as an admin of that node's org or of a
    participating member of the app (who may install on the nodes hosting it). Every
    node that endorses the contract needs it; installing the same package twice is
    harmless.
    """
    package_id, archive = load_package(source)
    installers = list(install_on) if install_on else [admins[0]]
    installed = installers[0].install(archive)
    for gw in installers[1:]:
        gw.install(archive)
    name = name or installed["name"]
    sequence = next_sequence(admins[0], app_name, name)
    args = (name, installed["version"], sequence, package_id, policy)
    return _approve_then_commit(admins, app_name, ("approve", "commit"), args)


def set_consenters(admins: list[Gateway], app_name: str, nodes: Sequence[str]) -> dict[str, Any]:
    """Approve, as every given org admin, and commit the app's next consenter set.

    It orders every block after the one that commits it; the nodes must be among the
    nodes hosting the app.
    """
    current = admins[0].app(app_name).contract(LIFECYCLE).evaluate("consenters")
    args = (list(nodes), int(current["sequence"]) + 1)
    return _approve_then_commit(admins, app_name, ("approve_consenters", "commit_consenters"), args)


def _approve_then_commit(
    admins: list[Gateway], app_name: str, functions: tuple[str, str], args: tuple[Any, ...]
) -> dict[str, Any]:
    """Each admin approves, then the first commits; every admin's node is asked to
    include what the others already saw (``after_block``), so approvals are read."""
    approve, commit = functions
    for gw in admins:
        for other in admins:
            gw.seen.merge(other.seen)
        gw.app(app_name).contract(LIFECYCLE).submit(approve, *args)
    for other in admins:
        admins[0].seen.merge(other.seen)
    result: dict[str, Any] = admins[0].app(app_name).contract(LIFECYCLE).submit(commit, *args)
    return result
