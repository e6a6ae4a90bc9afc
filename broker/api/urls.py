from django.urls import path, re_path

from broker.api import views

urlpatterns = [
    path("v1/oauth/token", views.token_endpoint, name="api-token"),
    path("v1/grants", views.list_grants, name="api-grants"),
    path("v1/access-token", views.access_token, name="api-access-token"),
    path("v1/sign", views.sign, name="api-sign"),
    path("v1/connect-links", views.create_connect_link, name="api-connect-links"),
    path("v1/ping", views.ping, name="api-ping"),
    path("v1/openapi.json", views.openapi, name="api-openapi"),
    # Anything else under /api/ is a JSON 404, not an HTML page.
    re_path(r"^.*$", views.not_found),
]
