from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from broker import connections, health, metrics, oauth1_flow

urlpatterns = [
    path("", RedirectView.as_view(url="/connections/", permanent=False)),
    path("accounts/", include("accounts.urls")),
    path("connections/", connections.my_connections, name="connections"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("oauth1/connect/<slug:slug>", oauth1_flow.connect, name="oauth1-connect"),
    path("oauth1/callback/<slug:slug>", oauth1_flow.callback, name="oauth1-callback"),
]
