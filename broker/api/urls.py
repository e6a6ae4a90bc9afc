from django.urls import path, re_path

from broker.api import proxy, serving, token_endpoint

urlpatterns = [
    # The hot path first.
    path("v1/access-token", serving.access_token, name="api-access-token"),
    path("v1/oauth/token", token_endpoint.token_endpoint, name="api-token"),
    path("v1/grants", serving.list_grants, name="api-grants"),
    path("v1/sign", serving.sign, name="api-sign"),
    path("v1/connect-links", serving.create_connect_link, name="api-connect-links"),
    path("v1/ping", serving.ping, name="api-ping"),
    # Any method; the path may be anything (checked by the view, with a JSON refusal).
    re_path(r"^v1/proxy/(?P<slug>[^/]+)(?:/(?P<path>[\s\S]*))?$", proxy.proxy, name="api-proxy"),
    path("v1/openapi.json", serving.openapi, name="api-openapi"),
    # Anything else under /api/ is a JSON 404, not an HTML page.
    re_path(r"^.*$", serving.not_found),
]
