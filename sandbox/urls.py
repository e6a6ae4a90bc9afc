"""URLs of the sandbox provider: Atlassian Cloud and Jira Data Center paths."""

from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from oauth2_provider import views as dot_views
from oauth2_provider.views import AuthorizationView

from sandbox.provider import (
    api_tokens,
    cloud_api_views,
    connected_apps,
    jira_views,
    oauth1_views,
    oauth2_views,
    pages,
    switch_views,
)

authorize = AuthorizationView.as_view()

# OpenID Connect (the IdP the broker signs people in with), named in django-oauth-toolkit's
# namespace so that its discovery document links the sandbox's own endpoints.
oidc_patterns = [
    path("oauth/authorize", authorize, name="authorize"),
    path("oauth/token", oauth2_views.token, name="token"),
    re_path(
        r"^\.well-known/openid-configuration$",
        dot_views.ConnectDiscoveryInfoView.as_view(),
        name="oidc-connect-discovery-info",
    ),
    path(".well-known/jwks.json", dot_views.JwksInfoView.as_view(), name="jwks-info"),
    path("userinfo", dot_views.UserInfoView.as_view(), name="user-info"),
    path("oidc/logout", dot_views.RPInitiatedLogoutView.as_view(), name="rp-initiated-logout"),
]

urlpatterns = [
    path("", pages.home, name="home"),
    path("avatar.png", pages.avatar, name="avatar"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="sandbox/login.html"),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="/"), name="logout"),
    # OAuth 2.0: Atlassian Cloud paths ...
    path("oauth/authorize", authorize, name="authorize"),
    path("oauth/token", oauth2_views.token, name="token"),
    path("oauth/revoke", oauth2_views.revoke, name="revoke"),
    path("oauth/token/accessible-resources", oauth2_views.accessible_resources),
    path("me", oauth2_views.me, name="me"),
    # ... and Jira Data Center's.
    path("rest/oauth2/latest/authorize", authorize, name="dc-authorize"),
    path("rest/oauth2/latest/token", oauth2_views.token, name="dc-token"),
    # OAuth 1.0a: Jira Data Center application links.
    path("plugins/servlet/oauth/request-token", oauth1_views.request_token),
    path(
        "plugins/servlet/oauth/authorize",
        oauth1_views.authorize,
        name="oauth1-authorize",
    ),
    path("plugins/servlet/oauth/access-token", oauth1_views.access_token),
    # Jira REST resources (OAuth 1.0a or bearer).
    path("rest/api/2/myself", jira_views.myself),
    path("rest/api/2/echo", jira_views.echo),
    path("rest/api/2/issue", jira_views.create_issue),
    # Jira Cloud's REST API under the one API origin (api.atlassian.com/ex/jira/<cloud id>).
    path("ex/jira/<str:cloud_id>/rest/api/3/myself", cloud_api_views.myself),
    path("ex/jira/<str:cloud_id>/rest/api/3/search", cloud_api_views.search),
    path("ex/jira/<str:cloud_id>/rest/api/3/issue", cloud_api_views.create_issue),
    path(
        "ex/jira/<str:cloud_id>/rest/api/3/attachment/content/<str:attachment_id>",
        cloud_api_views.attachment_content,
    ),
    path("ex/jira/<str:cloud_id>/rest/api/3/filler", cloud_api_views.filler),
    # Atlassian Cloud with an API token (Basic auth), and where demo users make one.
    path("rest/api/3/myself", api_tokens.myself),
    path("manage-profile/security/api-tokens", api_tokens.manage, name="api-tokens"),
    # Where a user removes the apps they authorized: Atlassian's path, and Jira DC's.
    path("manage-profile/apps", connected_apps.connected_apps, name="connected-apps"),
    path("plugins/servlet/oauth/users/access-tokens", connected_apps.connected_apps),
    # Test switches (404 unless SANDBOX_TEST_SWITCHES=1).
    path("_sandbox/faults", switch_views.faults),
    path("_sandbox/counters", switch_views.counters),
    path("_sandbox/counters/reset", switch_views.reset_counters),
    path("_sandbox/revoke-user", switch_views.revoke_user),
    path("_sandbox/expire-access-tokens", switch_views.expire_access_tokens),
    path("_sandbox/tokens", switch_views.tokens),
    path("_sandbox/token-history", switch_views.token_history),
    path("_sandbox/groups", switch_views.groups),
    path("_sandbox/api-tokens", switch_views.api_token),
    path("", include((oidc_patterns, "oauth2_provider"))),
]
