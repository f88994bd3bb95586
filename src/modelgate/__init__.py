"""modelgate: an open model catalogue and chat gateway.

The public surface: the seed's response types of ``GET /models`` and the Python clients. Everything
else (the app, the catalogue loader, providers) is imported from its own module.
"""

from modelgate.client import (
    AsyncModelgateClient,
    ModelgateAPIError,
    ModelgateClient,
    ModelgateClientError,
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

__all__ = [
    "AsyncModelgateClient",
    "Endpoints",
    "ModelConfiguration",
    "ModelConfigurationData",
    "ModelParameters",
    "ModelgateAPIError",
    "ModelgateClient",
    "ModelgateClientError",
    "ModelgateStreamError",
    "ModelsResponse",
    "__version__",
]
