"""Static files with DEBUG off: after collectstatic, gunicorn (which serves nothing itself)
answers the pages' stylesheets through WhiteNoise, hashed, compressed and long-cached."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests

from tests.gunicorn_server import gunicorn
from tests.sandbox_grants import PROJECT_ROOT, subprocess_env

pytestmark = pytest.mark.slow

STYLESHEET = re.compile(r'href="(/static/[^"]+\.css)"')
HASHED_NAME = re.compile(r"\.[0-9a-f]{12}\.css$")
ONE_YEAR_OR_MORE = re.compile(r"max-age=(\d+)")


@pytest.fixture(scope="module")
def production_site(django_db_setup, tmp_path_factory):
    """collectstatic as the README's release steps run it, then gunicorn; its URL."""
    tmp_path = tmp_path_factory.mktemp("production-static")
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.static_root_settings",
        "TEST_STATIC_ROOT": str(tmp_path / "static"),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"],
        cwd=PROJECT_ROOT,
        env=subprocess_env(**env),
        check=True,
        timeout=120,
    )
    with gunicorn(tmp_path / "gunicorn.log", **env) as url:
        yield url


@pytest.mark.parametrize("page", ["/admin/login/", "/accounts/login/"])
def test_a_production_pages_css_is_served_hashed_compressed_and_long_cached(production_site, page):
    html = requests.get(f"{production_site}{page}", timeout=10)
    assert html.status_code == 200
    stylesheets = STYLESHEET.findall(html.text)
    assert stylesheets, html.text
    for href in stylesheets:
        assert HASHED_NAME.search(href), href
        css = requests.get(
            f"{production_site}{href}", headers={"Accept-Encoding": "gzip"}, timeout=10
        )
        assert css.status_code == 200, href
        assert css.headers["Content-Type"].startswith("text/css")
        assert css.headers["Content-Encoding"] == "gzip"
        cache_control = css.headers["Cache-Control"]
        assert "immutable" in cache_control
        assert int(ONE_YEAR_OR_MORE.search(cache_control)[1]) >= 365 * 24 * 3600


def test_an_unknown_static_file_is_a_plain_404(production_site):
    response = requests.get(f"{production_site}/static/broker/nothing.css", timeout=10)
    assert response.status_code == 404
