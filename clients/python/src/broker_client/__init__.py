"""Python client for the OAuth broker's service API.

    from broker_client import BrokerClient

    broker = BrokerClient("https://broker.example", "reporting-1a2b", client_secret="bks_...")
    token = broker.access_token(user="alice", provider="atlassian")

See docs/client.md in the broker's repository.
"""

__version__ = "0.1.0"

from broker_client.client import BrokerClient  # noqa: E402
from broker_client.errors import (  # noqa: E402
    AuthenticationError,
    BrokerError,
    BrokerUnreachable,
    Forbidden,
    InsufficientScope,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    ReconnectRequired,
)
from broker_client.results import Account, ConnectLink, Grant, ProviderToken  # noqa: E402

__all__ = [
    "Account",
    "AuthenticationError",
    "BrokerClient",
    "BrokerError",
    "BrokerUnreachable",
    "ConnectLink",
    "Forbidden",
    "Grant",
    "InsufficientScope",
    "InvalidRequest",
    "NotFound",
    "ProviderToken",
    "ProviderUnavailable",
    "RateLimited",
    "ReconnectRequired",
    "__version__",
]
