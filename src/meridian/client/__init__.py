"""The Meridian SDK, in the shape of Fabric's Gateway client.

::

    from meridian.client import Identity, connect

    identity = Identity.from_dir("net/orgs/org1/users/user1")   # cert.pem + key.pem
    with connect("http://127.0.0.1:7050", identity) as gateway:
        contract = gateway.app("demo").contract("asset-transfer")
        contract.submit("create", "a1", "alice", 100)           # waits for the commit
        print(contract.evaluate("read", "a1"))
        commit = contract.submit_async("transfer", "a1", "bob") # returns once accepted
        print(commit.result, commit.status().code)
        for block in gateway.app("demo").events(checkpoint=FileCheckpoint("cp.json")):
            ...

The private key never leaves the process: proposals and requests are signed here.
:class:`AsyncGateway` offers the same with ``await``. Errors are the exceptions of
:mod:`meridian.errors`, rebuilt from the gateway's JSON (code, message, hint).
"""

from .asyncio import AsyncApp, AsyncContract, AsyncGateway, connect_async
from .core import BlockEvent, Checkpoint, FileCheckpoint, Identity, Receipt
from .sync import App, Commit, Contract, Gateway, connect

__all__ = [
    "App",
    "AsyncApp",
    "AsyncContract",
    "AsyncGateway",
    "BlockEvent",
    "Checkpoint",
    "Commit",
    "Contract",
    "FileCheckpoint",
    "Gateway",
    "Identity",
    "Receipt",
    "connect",
    "connect_async",
]
