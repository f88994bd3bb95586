"""modelgate: an open model catalogue and chat gateway.

The public surface: the seed's response types of ``GET /models`` and the Python clients. Everything
else (the app, the catalogue loader, providers) is imported from its own module.

The names are resolved on first use (PEP 562 ``__getattr__``): the client pulls in httpx and the types
pydantic, which every ``modelgate`` command would otherwise pay at start-up (``modelgate --help`` needs
neither; issue 13 item 5).
"""

import importlib
import typing

if typing.TYPE_CHECKING:
    from modelgate.client import (
        AsyncModelgateClient,
        ModelgateAPIError,
        ModelgateClient,
        ModelgateClientError,
        ModelgateConnectionError,
        ModelgateStreamError,
    )
    from modelgate.schema import (
        Endpoints,
        ModelConfiguration,
        ModelConfigurationData,
        ModelParameters,
        ModelsResponse,
    )

__version__ = "0.1.0"

#: Public name → the module defining it.
_HOMES = {
    "AsyncModelgateClient": "modelgate.client",
    "Endpoints": "modelgate.schema",
    "ModelConfiguration": "modelgate.schema",
    "ModelConfigurationData": "modelgate.schema",
    "ModelParameters": "modelgate.schema",
    "ModelgateAPIError": "modelgate.client",
    "ModelgateClient": "modelgate.client",
    "ModelgateClientError": "modelgate.client",
    "ModelgateConnectionError": "modelgate.client",
    "ModelgateStreamError": "modelgate.client",
    "ModelsResponse": "modelgate.schema",
}

__all__ = [
    "AsyncModelgateClient",
    "Endpoints",
    "ModelConfiguration",
    "ModelConfigurationData",
    "ModelParameters",
    "ModelgateAPIError",
    "ModelgateClient",
    "ModelgateClientError",
    "ModelgateConnectionError",
    "ModelgateStreamError",
    "ModelsResponse",
    "__version__",
]


def __getattr__(name: str) -> typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'modelgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
