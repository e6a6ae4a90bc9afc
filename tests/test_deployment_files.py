"""deploy/: the Kubernetes manifests and the Compose file pass only settings the broker reads,
start only the image's commands, and run non-root on a read-only root filesystem. (CI
validates the manifests against the Kubernetes schemas too: `make lint`.)"""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SETTINGS_SOURCE = (ROOT / "broker" / "settings.py").read_text()
# gunicorn.conf.py reads the web process's own (WEB_CONCURRENCY, GUNICORN_THREADS, ...).
GUNICORN_SOURCE = (ROOT / "gunicorn.conf.py").read_text()
ENTRYPOINT_COMMANDS = set(
    re.findall(r"^  (\w+)\) ", (DEPLOY / "entrypoint.sh").read_text(), flags=re.MULTILINE)
)


def manifests() -> list[dict]:
    return [
        document
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def broker_services() -> dict[str, dict]:
    """The Compose services that run the broker's image."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if "oauth-broker" in service.get("image", "")
    }


def pod_specs() -> Iterator[tuple[str, dict]]:
    for document in manifests():
        if document["kind"] in ("Deployment", "Job"):
            yield document["metadata"]["name"], document["spec"]["template"]["spec"]


def names_passed() -> set[str]:
    """Every environment variable the manifests and the Compose file give the broker."""
    names: set[str] = set()
    for document in manifests():
        if document["kind"] == "ConfigMap":
            names |= set(document["data"])
    for _, pod in pod_specs():
        for container in pod["containers"]:
            names |= {variable["name"] for variable in container.get("env", [])}
    for service in broker_services().values():
        names |= set(service["environment"])
    return names


def unknown(names: set[str]) -> list[str]:
    """The names broker/settings.py (or gunicorn.conf.py) does not read. NAME_FILE counts
    only where settings read NAME as a secret (settings.secret: NAME or NAME_FILE)."""

    def read(name: str) -> bool:
        if name.endswith("_FILE"):
            return (
                re.search(rf"secret\(\s*\"{name[: -len('_FILE')]}\"", SETTINGS_SOURCE) is not None
            )
        quoted = f'"{name}"'
        return quoted in SETTINGS_SOURCE or quoted in GUNICORN_SOURCE

    return sorted(name for name in names if not read(name))


def test_every_setting_the_deployments_pass_is_read_by_the_broker():
    names = names_passed()
    assert {"SECRET_KEY_FILE", "BROKER_ENCRYPTION_KEYS_FILE", "DATABASE_URL_FILE"} <= names
    assert unknown(names) == []


@pytest.mark.parametrize(
    "name",
    ["BROKER_PUBLIC_URI", "SECRET_KEY_FIL", "BROKER_PUBLIC_URL_FILE", "DJANGO_DEBUG"],
    ids=["misspelled", "misspelled file", "file of a non-secret", "not ours"],
)
def test_a_setting_the_broker_does_not_read_is_reported(name):
    assert unknown(names_passed() | {name}) == [name]


def test_the_deployments_start_only_the_image_commands():
    assert {"web", "worker", "beat", "migrate"} <= ENTRYPOINT_COMMANDS
    started = {container["args"][0] for _, pod in pod_specs() for container in pod["containers"]}
    assert started == {"web", "worker", "beat", "migrate"}
    commands = {service["command"][0] for service in broker_services().values()}
    assert commands == {"web", "worker", "beat", "migrate"}


def test_every_pod_runs_non_root_on_a_read_only_root_filesystem():
    pods = dict(pod_specs())
    assert set(pods) == {"broker-web", "broker-worker", "broker-beat", "broker-migrate"}
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            mounted = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/broker", "/run/secrets/broker"} <= mounted, name
    for name, service in broker_services().items():
        assert service["read_only"] is True, name


def test_web_is_probed_scaled_and_kept_available():
    kinds = {(document["kind"], document["metadata"]["name"]) for document in manifests()}
    assert {
        ("Deployment", "broker-web"),
        ("Service", "broker-web"),
        ("HorizontalPodAutoscaler", "broker-web"),
        ("PodDisruptionBudget", "broker-web"),
        ("Job", "broker-migrate"),
    } <= kinds
    (web,) = dict(pod_specs())["broker-web"]["containers"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    beat = next(d for d in manifests() if d["metadata"]["name"] == "broker-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


def test_secrets_are_files_under_the_mounted_secret():
    """Secrets travel by reference (NAME_FILE), never as values in a manifest."""
    config = next(d for d in manifests() if d["kind"] == "ConfigMap")["data"]
    files = {name: path for name, path in config.items() if name.endswith("_FILE")}
    assert files
    assert all(path.startswith("/run/secrets/broker/") for path in files.values())
    assert not {"SECRET_KEY", "BROKER_ENCRYPTION_KEYS", "DATABASE_URL", "REDIS_URL"} & set(config)
    assert not any(d["kind"] == "Secret" for d in manifests())
