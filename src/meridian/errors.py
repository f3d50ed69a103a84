"""The one exception tree of Meridian.

Every error carries a stable machine ``code`` (used by the gateway's JSON errors and
the SDK's exceptions), a human ``message`` and, where useful, a ``hint`` that says
what to do next. The gateway maps each branch to one HTTP status, exactly once::

    MeridianError                      500 internal
    ├── InvalidInput                   400 malformed / oversized / wrong types
    │   └── ContractArgumentError      400 wrong argument count or types for a function
    ├── AuthError                      401 bad, missing or replayed signature
    │   └── CertificateError           401 unknown org, bad chain, expired, revoked
    ├── Forbidden                      403 authenticated but not allowed
    ├── NotFound                       404 unknown app, contract, function, tx, block
    ├── Conflict                       409 duplicate tx, MVCC conflict, already exists
    ├── ContractFailure                422 the contract raised, timed out, hit a limit
    ├── Busy                           429 queues full: retry after ``retry_after_s``
    ├── Unavailable                    503 the node is starting, stopping or degraded
    └── Corruption                     500 local data fails its own checks

Verdicts about a peer's or a block's content are *not* exceptions that unwind the
node: validation returns a :class:`meridian.types.TxCode` per transaction instead.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MeridianError(Exception):
    """Root of every error Meridian raises on purpose."""

    http_status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.hint = hint
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the gateway sends for this error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.details:
            body["details"] = self.details
        return body

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class InvalidInput(MeridianError):
    http_status = 400
    default_code = "invalid_input"


class ContractArgumentError(InvalidInput):
    default_code = "bad_argument"


class AuthError(MeridianError):
    http_status = 401
    default_code = "bad_signature"


class CertificateError(AuthError):
    default_code = "certificate_invalid"


class Forbidden(MeridianError):
    http_status = 403
    default_code = "forbidden"


class NotFound(MeridianError):
    http_status = 404
    default_code = "not_found"


class Conflict(MeridianError):
    http_status = 409
    default_code = "conflict"


class ContractFailure(MeridianError):
    http_status = 422
    default_code = "contract_error"


class Busy(MeridianError):
    http_status = 429
    default_code = "busy"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class Unavailable(MeridianError):
    http_status = 503
    default_code = "unavailable"


class Corruption(MeridianError):
    http_status = 500
    default_code = "ledger_corrupt"


ERROR_CLASSES: tuple[type[MeridianError], ...] = (
    ContractArgumentError,
    CertificateError,
    InvalidInput,
    AuthError,
    Forbidden,
    NotFound,
    Conflict,
    ContractFailure,
    Busy,
    Unavailable,
    Corruption,
    MeridianError,
)


def error_class_for(status: int, code: str | None = None) -> type[MeridianError]:
    """The error class a gateway answer maps back to (used by the SDK)."""
    if code == ContractArgumentError.default_code:
        return ContractArgumentError
    if code and code.startswith(("certificate_", "unknown_org")):
        return CertificateError
    if status == Corruption.http_status:
        return Corruption if code == Corruption.default_code else MeridianError
    for cls in ERROR_CLASSES:
        if cls.http_status == status and cls not in (ContractArgumentError, CertificateError):
            return cls
    return MeridianError
