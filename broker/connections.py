"""The "My connections" page: the signed-in user's grants and the apps they can connect."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render

from accounts.requests import AuthenticatedRequest
from broker.models import Grant, ProviderApp


@login_required
def my_connections(request: AuthenticatedRequest) -> HttpResponse:
    grants = (
        Grant.objects.filter(user=request.user)
        .exclude(status=Grant.Status.REVOKED)
        .select_related("provider_app")
        .order_by("provider_app__name", "account_name")
    )
    apps = ProviderApp.objects.filter(enabled=True).order_by("name")
    return render(request, "connections/list.html", {"grants": grants, "apps": apps})
