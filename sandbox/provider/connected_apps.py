"""The demo user's "Connected apps" page: the apps they authorized (OAuth 2.0 and 1.0a),
each with a button that removes its access, as Atlassian's account page
(id.atlassian.com/manage-profile/apps) and Jira Data Center's "Access tokens" page do. The
broker's Disconnect page links here for the sandbox's apps (their `account` endpoint)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods
from oauth2_provider.models import AccessToken, Application, RefreshToken

from sandbox.provider.models import OAuth1AccessToken, OAuth1Consumer


@login_required
@require_http_methods(["GET", "POST"])
def connected_apps(request: HttpRequest) -> HttpResponse:
    user = request.user
    now = timezone.now()
    if request.method == "POST":
        with transaction.atomic():
            if application := request.POST.get("oauth2_application", ""):
                for token in RefreshToken.objects.filter(
                    user=user, application_id=application, revoked__isnull=True
                ):
                    token.revoke()
                AccessToken.objects.filter(user=user, application_id=application).delete()
            if consumer := request.POST.get("oauth1_consumer", ""):
                OAuth1AccessToken.objects.filter(
                    user=user, consumer_id=consumer, revoked__isnull=True
                ).update(revoked=now)
        return redirect(request.path)
    oauth2 = Application.objects.filter(
        refreshtoken__user=user, refreshtoken__revoked__isnull=True
    ).distinct()
    oauth1 = OAuth1Consumer.objects.filter(
        oauth1accesstoken__user=user,
        oauth1accesstoken__revoked__isnull=True,
        oauth1accesstoken__expires__gt=now,
    ).distinct()
    return render(
        request, "sandbox/connected_apps.html", {"oauth2_apps": oauth2, "oauth1_apps": oauth1}
    )
