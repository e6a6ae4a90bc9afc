"""Print a demo user's ID token from the sandbox IdP, issued to a client of the developer's
choice: what a service that signed the user in holds, to try token exchange (RFC 8693) at
the broker without writing a sign-in.

    python sandbox/manage.py sandbox_id_token alice --client-id demo-assistant

The token is made by the IdP's own code (django-oauth-toolkit's `finalize_id_token` with the
sandbox's validator), as the authorization code flow would issue it: the same claims
(`sub`, `preferred_username`, `email`, `groups`, ...), issuer, lifetime and signing key, and
it is recorded like one. Run it with the sandbox's environment (`make dev`'s defaults:
`SANDBOX_PUBLIC_URL=http://localhost:8001`, the database and key in `data/`), or the issuer
or the key will not be those the broker trusts.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from oauth2_provider.models import Application
from oauth2_provider.settings import oauth2_settings
from oauthlib.common import Request


class Command(BaseCommand):
    help = "Print a sandbox user's ID token, issued to the given client (development only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="a sandbox user, e.g. alice")
        parser.add_argument(
            "--client-id", required=True, help="the client the token is issued to (its `aud`)"
        )
        parser.add_argument("--scope", default="openid profile email")
        parser.add_argument(
            "--json", action="store_true", help="print {id_token, expires_in, client_id}"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = str(options["scope"]).split()
        if "openid" not in scopes:
            raise CommandError("--scope must include openid")
        client_id = str(options["client_id"])
        application = Application.objects.filter(client_id=client_id).first()
        if application is None:
            known = ", ".join(
                Application.objects.exclude(algorithm="")
                .order_by("client_id")
                .values_list("client_id", flat=True)
            )
            raise CommandError(
                f"no client {client_id!r} at the sandbox IdP (clients with ID tokens: "
                f"{known or 'none; run sandbox_setup'})"
            )
        if application.algorithm != Application.RS256_ALGORITHM:
            raise CommandError(f"client {client_id!r} is not set up for RS256 ID tokens")
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None or not user.is_active:
            raise CommandError(f"no active sandbox user {options['username']!r}")

        # An oauthlib request as the token endpoint's would be, once the code was checked.
        request = Request(f"{oauth2_settings.OIDC_ISS_ENDPOINT}/oauth/token")
        request.user = user
        request.client = application
        request.client_id = client_id
        request.scopes = scopes
        request.scope = " ".join(scopes)
        request.nonce = None
        validator = oauth2_settings.OAUTH2_VALIDATOR_CLASS()
        # What oauthlib starts an ID token with (aud, iat); the validator adds the rest.
        claims = {"aud": client_id, "iat": int(time.time())}
        id_token = validator.finalize_id_token(claims, {}, None, request)
        if options["json"]:
            answer = {
                "id_token": id_token,
                "expires_in": oauth2_settings.ID_TOKEN_EXPIRE_SECONDS,
                "client_id": client_id,
            }
            self.stdout.write(json.dumps(answer))
        else:
            self.stdout.write(id_token)
