"""The broker's URLs plus two that fail on purpose (tests of the 403 and 500 pages)."""

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import path

from broker.urls import handler400
from broker.urls import urlpatterns as broker_urlpatterns


def forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied


def broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug, on purpose")


urlpatterns = [path("_test/forbidden", forbidden), path("_test/broken", broken)]
urlpatterns += broker_urlpatterns
__all__ = ["handler400", "urlpatterns"]
