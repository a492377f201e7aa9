"""API keys: who may call management operations and, when a key is set, inference."""

from __future__ import annotations

import hmac

from app.errors import Forbidden, InvalidKey, Unauthorized
from app.settings import Settings

MANAGEMENT_DISABLED = (
    "management endpoints are disabled: set ONNX_SERVE_MANAGEMENT_API_KEY "
    "(or ONNX_SERVE_ALLOW_OPEN_MANAGEMENT=true) to enable them"
)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, if that is what it is."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _check(given: str | None, expected: str, what: str) -> None:
    if given is None:
        raise Unauthorized(f"{what} needs an API key (Authorization: Bearer or X-API-Key)")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidKey("the API key is not valid")


class AccessKeys:
    """Checks the key a client presented, however its front end carried it."""

    def __init__(self, settings: Settings) -> None:
        self._management = settings.management_api_key
        self._inference = settings.inference_api_key
        self._open_management = settings.allow_open_management

    @property
    def inference_open(self) -> bool:
        """True when inference needs no key (the common case: nothing to check)."""
        return self._inference is None

    def check_management(self, given: str | None) -> None:
        """Allow management calls only with the management key (or when opened explicitly)."""
        if self._management is None:
            if self._open_management:
                return
            raise Forbidden(MANAGEMENT_DISABLED)
        _check(given, self._management.get_secret_value(), "this endpoint")

    def check_inference(self, given: str | None) -> None:
        """Allow inference with the inference key, when one is configured."""
        if self._inference is not None:
            _check(given, self._inference.get_secret_value(), "inference")
