"""Pages at desktop and phone width in the browser tests: a screenshot of each for a person
to look at (in BROKER_SCREENSHOTS, or the test's tmp_path), and the layout checks that
hold at every width."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.test import Client

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WIDTHS = {"desktop": DESKTOP, "phone": PHONE}


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BROKER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def horizontal_overflow(page: Any) -> int:
    """How far the page scrolls sideways (0: it fits the window)."""
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def at_each_width(page: Any, url: str, name: str, folder: Path) -> Iterator[str]:
    """Opens `url` at desktop and phone width, saves the whole page as
    `<name>-<width>.png`, and yields "desktop" / "phone" for the caller's checks."""
    for width, viewport in WIDTHS.items():
        page.set_viewport_size(viewport)
        page.goto(url)
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
        yield width


def sign_in_browser(page: Any, live_server: Any, user: Any) -> None:
    """The browser signed in as `user` (a session made by the test client), whatever the
    sign-in pages offer."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}]
    )
