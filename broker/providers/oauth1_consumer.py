"""The broker as an OAuth 1.0a consumer of one provider app: its keys and its signer.

The consumer key is `ProviderApp.client_id`; RSA-SHA1 apps hold a sealed RSA private key,
HMAC-SHA1 apps a sealed consumer secret (RFC 5849 3.4.2, 3.4.3). Signatures are Authlib's;
this module only feeds it the app's credentials, which never leave the broker.
"""

from __future__ import annotations

from authlib.integrations.requests_client import OAuth1Auth
from authlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_RSA_SHA1
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.models import ProviderApp


class ConsumerMisconfigured(Exception):
    """The app lacks what its signature method needs; the message names what, never a value."""


def uses_rsa(app: ProviderApp) -> bool:
    # RSA-SHA1 is the default for Data Center application links.
    return (app.signature_method or SIGNATURE_RSA_SHA1) == SIGNATURE_RSA_SHA1


def public_key_pem(app: ProviderApp) -> str | None:
    """The PEM public key matching an RSA-SHA1 app's private key, or None for other apps.

    This is what a Jira or Confluence admin pastes into the application link's incoming
    authentication; it is not a secret.
    """
    if app.protocol != "oauth1" or not uses_rsa(app):
        return None
    pem = app.unseal("private_key")
    if not pem:
        return None
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConsumerMisconfigured(
            f"provider app {app.slug!r}: the private key is not an unencrypted PEM key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConsumerMisconfigured(f"provider app {app.slug!r}: the private key is not RSA")
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def consumer_auth(
    app: ProviderApp,
    *,
    token: str | None = None,
    token_secret: str | None = None,
    callback: str | None = None,
    verifier: str | None = None,
) -> OAuth1Auth:
    """An Authlib signer (a requests auth, and a `ClientAuth`) for this app's consumer."""
    if not app.client_id:
        raise ConsumerMisconfigured(f"provider app {app.slug!r} has no consumer key")
    if uses_rsa(app):
        method, field, what, argument = (
            SIGNATURE_RSA_SHA1,
            "private_key",
            "RSA private key",
            "rsa_key",
        )
    elif app.signature_method == SIGNATURE_HMAC_SHA1:
        method, field, what = SIGNATURE_HMAC_SHA1, "client_secret", "consumer secret"
        argument = "client_secret"
    else:
        raise ConsumerMisconfigured(
            f"provider app {app.slug!r}: unsupported signature method {app.signature_method!r}"
        )
    key = app.unseal(field)
    if not key:
        raise ConsumerMisconfigured(f"provider app {app.slug!r} has no {what}")
    return OAuth1Auth(
        app.client_id,
        token=token,
        token_secret=token_secret,
        redirect_uri=callback,
        verifier=verifier,
        signature_method=method,
        **{argument: key},
    )
