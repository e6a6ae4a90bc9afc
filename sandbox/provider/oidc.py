"""The sandbox as an OpenID Connect IdP: the claims its ID tokens carry for demo users."""

from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator

from sandbox.provider import identity


class SandboxOAuth2Validator(OAuth2Validator):
    # `groups` comes with `openid` alone, as a company IdP configured for the broker sends it.
    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "openid"}

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        """OIDC Core 5.1 standard claims, plus `groups`: the user's sandbox groups."""
        user = request.user
        return {
            "preferred_username": user.get_username(),
            "name": identity.display_name(user),
            "given_name": user.first_name,
            "family_name": user.last_name,
            "email": identity.email(user),
            "email_verified": True,
            "groups": sorted(user.groups.values_list("name", flat=True)),
        }
