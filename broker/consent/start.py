"""Starting a consent, whatever the protocol: `begin` is what the Connect button and the
service connect links call; it hands over to the OAuth 2.0 or the OAuth 1.0a flow."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from broker.consent import oauth1_flow, oauth2_flow
from broker.models import ProviderApp


def begin(
    request: HttpRequest,
    app: ProviderApp,
    *,
    scopes: list[str] | None = None,
    return_to: str = "",
) -> HttpResponse:
    """Sends the signed-in user to `app`'s provider to consent; they come back to the
    callback and then to `return_to` if `broker.consent.return_urls.safe_return_url` accepts it.
    `scopes` may narrow the app's scopes, never widen them (OAuth 2.0 only); the provider
    is still asked for whatever the user's grant already holds (consent is incremental)."""
    if app.protocol == "api_token":
        # Nothing to consent to at the provider: the user stores a token they made there.
        return redirect("api-token", app.slug)
    if app.protocol == "oauth1":
        response: HttpResponse = oauth1_flow.begin_consent(request, app, return_to=return_to)
        return response
    return oauth2_flow.begin_consent(request, app, scopes=scopes, return_to=return_to)
