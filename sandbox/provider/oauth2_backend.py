"""django-oauth-toolkit backend that reads token requests the way Atlassian's servers do.

Atlassian Cloud posts token requests as JSON, Jira Data Center puts the parameters in the
query string, and standard clients post a form. oauthlib only reads a form body (and
rejects query parameters on the token endpoint, RFC 6749 3.2), so on the token and
revocation endpoints we merge all three into one form body and drop the query string.
"""

import json
from urllib.parse import urlparse, urlunparse

from django.http import HttpRequest
from oauth2_provider.oauth2_backends import OAuthLibCore
from oauthlib.common import urlencode

# URL names (sandbox/urls.py) of the endpoints whose parameters may come from anywhere.
MERGED_PARAMETER_ENDPOINTS = {"token", "dc-token", "revoke"}


def is_merged_parameter_request(request: HttpRequest) -> bool:
    match = request.resolver_match
    return (
        request.method == "POST"
        and match is not None
        and match.url_name in MERGED_PARAMETER_ENDPOINTS
    )


def json_body(request: HttpRequest) -> dict[str, str]:
    if request.content_type != "application/json":
        return {}
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if v is not None}


def token_request_params(request: HttpRequest) -> dict[str, str]:
    """Query string, then form or JSON body; the body wins when both carry a name."""
    params = {key: request.GET[key] for key in request.GET}
    params.update({key: request.POST[key] for key in request.POST})
    params.update(json_body(request))
    return params


class SandboxOAuthLibCore(OAuthLibCore):
    def _extract_params(self, request: HttpRequest) -> tuple[str, str, str, dict]:
        uri, http_method, body, headers = super()._extract_params(request)
        if not is_merged_parameter_request(request):
            return uri, http_method, body, headers
        parts = urlparse(uri)
        uri = urlunparse(parts._replace(query=""))
        body = urlencode(list(token_request_params(request).items()))
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return uri, http_method, body, headers
