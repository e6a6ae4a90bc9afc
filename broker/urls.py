from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.generic import RedirectView

from broker.consent import connect_links, connections, oauth1_flow, oauth2_flow
from broker.ops import health, metrics


def no_favicon(request: HttpRequest) -> HttpResponse:
    """Pages link broker/favicon.svg; clients that ask for /favicon.ico anyway (a JSON page
    in a browser) get an empty answer rather than a 404 in the logs."""
    return HttpResponse(status=204, headers={"Cache-Control": "max-age=86400"})


urlpatterns = [
    # First: the internal API sits on every request path of the services; pages can wait
    # for the few patterns tried before theirs.
    path("api/", include("broker.api.urls")),
    path("", RedirectView.as_view(pattern_name="connections", permanent=False)),
    path("accounts/", include("accounts.urls")),
    path("scim/v2/", include("accounts.scim.urls")),
    path("connections/", connections.my_connections, name="connections"),
    path("connections/<uuid:grant_id>/disconnect", connections.disconnect, name="disconnect"),
    path("connect/<slug:slug>", connections.connect, name="connect"),
    path("connections/api-token/<slug:slug>", connections.api_token, name="api-token"),
    path("oauth/callback/<slug:slug>", oauth2_flow.callback, name="oauth2-callback"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("oauth1/callback/<slug:slug>", oauth1_flow.callback, name="oauth1-callback"),
    path("connect-links/<str:token>", connect_links.follow, name="connect-link"),
    path("favicon.ico", no_favicon),
]

handler400 = "broker.ops.error_pages.bad_request"
