"""Human-facing pages of the sandbox that are not part of a protocol."""

import base64

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

# A 1x1 grey PNG: `picture` and `avatarUrl` point somewhere that answers.
AVATAR_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNoaGgAAAMEAYFL09IQAAAAAElFTkSuQmCC"
)


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "sandbox/home.html")


def avatar(request: HttpRequest) -> HttpResponse:
    return HttpResponse(AVATAR_PNG, content_type="image/png")
