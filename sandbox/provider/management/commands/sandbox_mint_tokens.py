"""Mint many OAuth 2.0 token pairs at once, as a code exchange would (benchmarks only).

`python sandbox/manage.py sandbox_mint_tokens --client-id ID --username alice --count 2000
--out tokens.json` writes a JSON list of token responses. Each pair is its own token family
with rotation and reuse protection, exactly like one consent's tokens.
"""

import json
import uuid
from datetime import timedelta
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone
from oauth2_provider.models import AccessToken, Application, RefreshToken, set_token_value
from oauth2_provider.settings import oauth2_settings
from oauthlib.common import generate_token


class Command(BaseCommand):
    help = "Mint token pairs for one user and application (for benchmarks)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--client-id", required=True)
        parser.add_argument("--username", default="alice")
        parser.add_argument("--count", type=int, default=1)
        parser.add_argument("--scope", default="read:me read:jira-work offline_access")
        parser.add_argument("--out", type=Path, required=True)

    def handle(self, *args: object, **options: object) -> None:
        application = Application.objects.get(client_id=options["client_id"])
        user = get_user_model().objects.get(username=options["username"])
        seconds = oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS
        scope = str(options["scope"])
        minted = []
        with transaction.atomic():
            for _ in range(int(str(options["count"]))):
                access_value, refresh_value = generate_token(), generate_token()
                access = AccessToken(
                    user=user,
                    application=application,
                    scope=scope,
                    expires=timezone.now() + timedelta(seconds=seconds),
                )
                set_token_value(access, access_value)
                access.save()
                refresh = RefreshToken(
                    user=user,
                    application=application,
                    access_token=access,
                    token_family=uuid.uuid4(),
                )
                set_token_value(refresh, refresh_value)
                refresh.save()
                minted.append(
                    {
                        "access_token": access_value,
                        "refresh_token": refresh_value,
                        "expires_in": seconds,
                        "scope": scope,
                        "token_type": "Bearer",
                    }
                )
        Path(str(options["out"])).write_text(json.dumps(minted))
        self.stdout.write(f"minted {len(minted)} token pairs")
