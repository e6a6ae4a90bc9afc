from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from broker import connect_links, connections, health, metrics

urlpatterns = [
    path("", RedirectView.as_view(url="/connections/", permanent=False)),
    path("accounts/", include("accounts.urls")),
    path("connections/", connections.my_connections, name="connections"),
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/", include("broker.api.urls")),
    path("connect-links/<str:token>", connect_links.follow, name="connect-link"),
]
