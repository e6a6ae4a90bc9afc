"""Python client for the OAuth broker's service API.

    from broker_client import BrokerClient

    broker = BrokerClient("https://broker.example", "reporting-1a2b", client_secret="bks_...")
    token = broker.access_token(user="alice", provider="atlassian")

See docs/client.md in the broker's repository.
"""

__version__ = "0.1.0"

from broker_client.client import BrokerClient  # noqa: E402
from broker_client.errors import (  # noqa: E402
    ApiTokenGrant,
    AuthenticationError,
    BrokerError,
    BrokerUnreachable,
    Forbidden,
    InsufficientScope,
    InvalidRequest,
    InvalidTarget,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    ReconnectRequired,
)
from broker_client.results import (  # noqa: E402
    Account,
    ConnectLink,
    ExchangedToken,
    Grant,
    ProviderToken,
)

__all__ = [
    "Account",
    "ApiTokenGrant",
    "AuthenticationError",
    "BrokerClient",
    "BrokerError",
    "BrokerUnreachable",
    "ConnectLink",
    "ExchangedToken",
    "Forbidden",
    "Grant",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidTarget",
    "NotFound",
    "ProviderToken",
    "ProviderUnavailable",
    "RateLimited",
    "ReconnectRequired",
    "__version__",
]
