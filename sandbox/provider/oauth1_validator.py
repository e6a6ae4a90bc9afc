"""oauthlib RequestValidator for the sandbox's Jira-Data-Center-like OAuth 1.0a provider.

A validator is created per request: it records why a request failed (`problems`) so the
views can answer with Jira's `oauth_problem=<code>` bodies, and it carries the signed-in
user through oauthlib's authorization endpoint.
"""

import string
from functools import cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from oauthlib.common import Request
from oauthlib.oauth1 import RequestValidator

from sandbox.provider.models import (
    OAUTH1_DENIED_VERIFIER,
    OAuth1AccessToken,
    OAuth1Consumer,
    OAuth1Nonce,
    OAuth1RequestToken,
)

# Most specific first: when several checks fail, the first of these is reported.
PROBLEM_PRIORITY = [
    "consumer_key_unknown",
    "signature_method_rejected",
    "timestamp_refused",
    "nonce_used",
    "token_expired",
    "token_rejected",
    "permission_denied",
    "signature_invalid",
]

SAFE_CHARACTERS = set(string.ascii_letters + string.digits + "-_.~")
DUMMY = "sandbox-dummy"


@cache
def dummy_rsa_public_key() -> str:
    """A key no client holds, so failed lookups still cost a real verification."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def is_safe(value: str, longest: int = 200) -> bool:
    return 0 < len(value) <= longest and set(value) <= SAFE_CHARACTERS


class SandboxOAuth1Validator(RequestValidator):
    def __init__(self, user: AbstractBaseUser | None = None) -> None:
        super().__init__()
        self.user = user
        self.problems: list[str] = []

    # -- reporting -------------------------------------------------------------------

    def fail(self, problem: str) -> bool:
        self.problems.append(problem)
        return False

    def problem(self, default: str = "signature_invalid") -> str:
        for problem in PROBLEM_PRIORITY:
            if problem in self.problems:
                return problem
        return default

    # -- configuration ---------------------------------------------------------------

    @property
    def enforce_ssl(self) -> bool:
        return False  # dev-only, plain http on localhost

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        return ("HMAC-SHA1", "RSA-SHA1")

    @property
    def dummy_client(self) -> str:
        return DUMMY

    @property
    def dummy_request_token(self) -> str:
        return DUMMY

    @property
    def dummy_access_token(self) -> str:
        return DUMMY

    def check_client_key(self, client_key: str) -> bool:
        return is_safe(client_key)

    def check_request_token(self, request_token: str) -> bool:
        return is_safe(request_token, 100)

    def check_access_token(self, request_token: str) -> bool:
        return is_safe(request_token, 100)

    def check_nonce(self, nonce: str) -> bool:
        return is_safe(nonce)

    def check_verifier(self, verifier: str) -> bool:
        return is_safe(verifier, 100)

    # -- lookups ---------------------------------------------------------------------

    def consumer(self, client_key: str) -> OAuth1Consumer | None:
        return OAuth1Consumer.objects.filter(key=client_key).first()

    def request_token(self, client_key: str, token: str) -> OAuth1RequestToken | None:
        return (
            OAuth1RequestToken.objects.filter(consumer__key=client_key, token=token)
            .select_related("user")
            .first()
        )

    def access_token(self, client_key: str, token: str) -> OAuth1AccessToken | None:
        return (
            OAuth1AccessToken.objects.filter(consumer__key=client_key, token=token)
            .select_related("user")
            .first()
        )

    def get_client_secret(self, client_key: str, request: Request) -> str:
        consumer = self.consumer(client_key)
        if consumer is None:
            return DUMMY
        if consumer.uses_rsa:
            # Jira: a consumer registered with a public key only accepts RSA-SHA1.
            self.fail("signature_method_rejected")
            return DUMMY
        return consumer.shared_secret

    def get_rsa_key(self, client_key: str, request: Request) -> str:
        consumer = self.consumer(client_key)
        if consumer is None:
            return dummy_rsa_public_key()
        if not consumer.uses_rsa:
            self.fail("signature_method_rejected")
            return dummy_rsa_public_key()
        return consumer.rsa_public_key

    def get_request_token_secret(self, client_key: str, token: str, request: Request) -> str:
        found = self.request_token(client_key, token)
        return found.secret if found else DUMMY

    def get_access_token_secret(self, client_key: str, token: str, request: Request) -> str:
        found = self.access_token(client_key, token)
        return found.secret if found else DUMMY

    def get_default_realms(self, client_key: str, request: Request) -> list[str]:
        return []

    def get_realms(self, token: str, request: Request) -> list[str]:
        return []

    def get_redirect_uri(self, token: str, request: Request) -> str:
        found = OAuth1RequestToken.objects.get(token=token)
        return found.callback

    # -- validation ------------------------------------------------------------------

    def validate_client_key(self, client_key: str, request: Request) -> bool:
        if self.consumer(client_key) is None:
            return self.fail("consumer_key_unknown")
        return True

    def validate_timestamp_and_nonce(
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: Request,
        request_token: str | None = None,
        access_token: str | None = None,
    ) -> bool:
        """RFC 5849 3.3: a nonce is used once per consumer and timestamp."""
        try:
            with transaction.atomic():
                OAuth1Nonce.objects.create(
                    consumer_key=client_key, timestamp=int(timestamp), nonce=nonce
                )
        except IntegrityError:
            return self.fail("nonce_used")
        return True

    def validate_requested_realms(
        self, client_key: str, realms: list[str], request: Request
    ) -> bool:
        return True

    def validate_realms(
        self, client_key: str, token: str, request: Request, uri=None, realms=None
    ) -> bool:
        return True

    def verify_realms(self, token: str, realms: list[str], request: Request) -> bool:
        return True

    def validate_redirect_uri(self, client_key: str, redirect_uri: str, request: Request) -> bool:
        # Jira accepts any callback from a registered consumer ("oob" included).
        return True

    def validate_request_token(self, client_key: str, token: str, request: Request) -> bool:
        found = self.request_token(client_key, token)
        if found is None:
            return self.fail("token_rejected")
        if found.is_expired:
            return self.fail("token_expired")
        return True

    def verify_request_token(self, token: str, request: Request) -> bool:
        found = OAuth1RequestToken.objects.filter(token=token).first()
        return found is not None and not found.is_expired and not found.verifier

    def validate_verifier(
        self, client_key: str, token: str, verifier: str, request: Request
    ) -> bool:
        found = self.request_token(client_key, token)
        if found is None or found.user is None or found.verifier == OAUTH1_DENIED_VERIFIER:
            return self.fail("permission_denied")
        if verifier != found.verifier:
            return self.fail("permission_denied")
        request.user = found.user
        return True

    def validate_access_token(self, client_key: str, token: str, request: Request) -> bool:
        found = self.access_token(client_key, token)
        if found is None or found.revoked is not None:
            return self.fail("token_rejected")
        if not found.is_live:
            return self.fail("token_expired")
        request.user = found.user
        return True

    # -- persistence -----------------------------------------------------------------

    def save_request_token(self, token: dict, request: Request) -> None:
        OAuth1RequestToken.objects.create(
            consumer=OAuth1Consumer.objects.get(key=request.client_key),
            token=token["oauth_token"],
            secret=token["oauth_token_secret"],
            callback=request.redirect_uri,
        )

    def save_verifier(self, token: str, verifier: dict, request: Request) -> None:
        # Conditional UPDATE: a request token is authorized at most once.
        updated = OAuth1RequestToken.objects.filter(token=token, verifier="").update(
            verifier=verifier["oauth_verifier"], user=self.user
        )
        if updated != 1:
            raise ValueError("request token already authorized")

    def save_access_token(self, token: dict, request: Request) -> None:
        OAuth1AccessToken.objects.create(
            consumer=OAuth1Consumer.objects.get(key=request.client_key),
            user=request.user,
            token=token["oauth_token"],
            secret=token["oauth_token_secret"],
            session_handle=token["oauth_session_handle"],
        )

    def invalidate_request_token(
        self, client_key: str, request_token: str, request: Request
    ) -> None:
        # delete() with its row count: the verifier can be exchanged once only.
        OAuth1RequestToken.objects.filter(consumer__key=client_key, token=request_token).delete()
