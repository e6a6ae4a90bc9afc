"""gunicorn with gunicorn.conf.py and LOG_FORMAT=json: every line of the process's output,
gunicorn's own included, is one JSON object; each request is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.gunicorn_server import gunicorn


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_gunicorn_writes_only_json_lines_and_one_per_request(tmp_path: Path):
    log_file = tmp_path / "gunicorn.log"
    with gunicorn(log_file, LOG_FORMAT="json", WEB_CONCURRENCY="1") as url:
        missing = requests.get(
            f"{url}/no-such-page/", headers={"X-Request-ID": "lb-42"}, timeout=10
        )
        assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "lb-42"

    text = log_file.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
    loggers = {line["logger"] for line in lines}
    assert "gunicorn.error" in loggers  # "Starting gunicorn", "Booting worker", ...
    assert any(line["message"].startswith("Booting worker") for line in lines)
    for_missing = [line for line in lines if line.get("path") == "/no-such-page/"]
    assert len(for_missing) == 1
    assert for_missing[0]["logger"] == "broker.request"
    assert (for_missing[0]["request_id"], for_missing[0]["client"]) == ("lb-42", "127.0.0.1")
    assert not [line for line in lines if "no-such-page" in line["message"]][1:]
