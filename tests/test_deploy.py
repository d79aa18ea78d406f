"""deploy/ is checked offline, with validators and schemas installed from the package registries:

- Kubernetes manifests (deploy/k8s/*.yaml): ``kubernetes-validate``'s bundled schemas, strict (unknown
  fields are errors), for the oldest Kubernetes we support and the newest it knows.
- KEDA's ScaledObject (a CRD, not in those schemas): the JSON schema of ``cloudcoil.models.keda``'s
  ScaledObject model, which is generated from KEDA's CRD, made strict the same way; plus our own check
  of the redis-streams trigger's metadata (the CRD leaves trigger metadata free-form).
- compose.yaml: the compose-spec JSON schema that ``check-jsonschema`` vendors (with its licence).
- The Dockerfile: multi-stage, a non-root USER, a HEALTHCHECK, no secret in ENV/ARG or COPY.
- Cross-checks: every IMAGINEBOT_* variable named anywhere in deploy/ is a setting of bot/config.py, and
  the names that tie the pieces together (streams, services, labels) agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bot.config import ENV_PREFIX, FIELDS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
KNOWN_ENV = {ENV_PREFIX + name.upper() for name in FIELDS} | {ENV_PREFIX + "CONFIG"}

Doc = dict[str, Any]


def manifests() -> list[tuple[str, Doc]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


MANIFESTS = manifests()


def by_kind(kind: str, name: str | None = None) -> Doc:
    found = [d for _, d in MANIFESTS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def compose() -> Doc:
    data: Doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_there_is_something_to_validate() -> None:
    kinds = {d["kind"] for _, d in MANIFESTS}
    assert kinds >= {"Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "ConfigMap", "ScaledObject"}


@pytest.mark.parametrize(("name", "doc"), [m for m in MANIFESTS if not m[1]["apiVersion"].startswith("keda.sh/")])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_schemas(name: str, doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{name} (Kubernetes {version}): {path}: {exc.message}")


def _strict(schema: Any) -> None:
    """Forbid unknown fields wherever the schema lists the known ones (kubernetes-validate's --strict)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)


def scaled_object_schema() -> Doc:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    schema: Doc = ScaledObject.model_json_schema(by_alias=True)
    _strict(schema)
    return schema


def test_the_scaled_object_matches_kedas_crd_and_scales_workers_on_stream_lag() -> None:
    doc = by_kind("ScaledObject")
    assert (doc["apiVersion"], doc["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    schema = scaled_object_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # Our own check where the CRD is free-form: the redis-streams scaler's metadata.
    streams = [t for t in doc["spec"]["triggers"] if t["type"] == "redis-streams"]
    assert streams, "workers must scale on stream lag"
    for trigger in streams:
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
        assert {"stream", "consumerGroup"} <= set(meta) and ({"address", "addressFromEnv", "host"} & set(meta))
        assert {"lagCount", "pendingEntriesCount"} & set(meta)
    assert doc["spec"]["scaleTargetRef"]["name"] == by_kind("Deployment", "imaginebot-worker")["metadata"]["name"]


def test_a_bad_manifest_is_caught() -> None:
    """The validators really look: a misspelt field and a wrong type fail."""
    deployment = json.loads(json.dumps(by_kind("Deployment", "imaginebot-bot")))
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    scaled = json.loads(json.dumps(by_kind("ScaledObject")))
    scaled["spec"]["maxReplicaCount"] = "many"
    scaled["spec"]["minReplicas"] = 1
    assert len(list(jsonschema.Draft202012Validator(scaled_object_schema()).iter_errors(scaled))) == 2


def compose_schema() -> Doc:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: Doc = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def test_compose_file_matches_the_compose_spec() -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = list(validator.iter_errors(compose()))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    broken = compose()
    broken["services"]["bot"]["restart_policy"] = "always"
    assert list(validator.iter_errors(broken)), "the schema must reject unknown service fields"


def test_compose_runs_bot_redis_and_a_gpu_worker() -> None:
    services = compose()["services"]
    assert {"bot", "redis", "worker"} <= set(services)
    redis = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis and "--appendonly yes" in redis
    assert any(v.startswith("redis:") for v in services["redis"]["volumes"])
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert any(str(v).startswith("data:/data") for v in services["bot"]["volumes"])
    assert any(str(v).startswith("model-cache:") for v in services["worker"]["volumes"])


def containers() -> Iterator[tuple[str, Doc]]:
    for name, doc in MANIFESTS:
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in template.get("containers", []):
            yield f"{name}/{container['name']}", container


def test_kubernetes_shape() -> None:
    bot = by_kind("Deployment", "imaginebot-bot")
    # SQLite has one writer process: one replica, and a rollout never starts a second pod beside it.
    assert bot["spec"]["replicas"] == 1 and bot["spec"]["strategy"]["type"] == "Recreate"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in bot["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"imaginebot-data"} and by_kind("PersistentVolumeClaim", "imaginebot-data")
    worker = by_kind("Deployment", "imaginebot-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    redis = by_kind("StatefulSet", "redis")
    assert redis["spec"]["volumeClaimTemplates"]
    conf = by_kind("ConfigMap", "redis")["data"]["redis.conf"]
    assert "maxmemory-policy noeviction" in conf and "appendonly yes" in conf
    for name, container in containers():
        if container["name"] != "redis":
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    for _, doc in MANIFESTS:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod is not None:
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]


def test_services_select_pods_that_exist() -> None:
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for _, d in MANIFESTS if "template" in d.get("spec", {})]
    for _, doc in MANIFESTS:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
            assert any(selector.items() <= labels.items() for labels in pod_labels), doc["metadata"]["name"]


def test_the_scaled_stream_is_the_one_the_bot_writes() -> None:
    from bot.remote.wire import GROUP, Keys

    model = by_kind("ConfigMap", "imaginebot")["data"]["IMAGINEBOT_MODEL"]
    trigger = next(t for t in by_kind("ScaledObject")["spec"]["triggers"] if t["type"] == "redis-streams")
    assert trigger["metadata"]["stream"] == Keys().stream(model)
    assert trigger["metadata"]["consumerGroup"] == GROUP


def test_every_variable_named_in_deploy_is_a_setting() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    named = {(p.name, v) for p in files for v in re.findall(r"\bIMAGINEBOT_[A-Z0-9_]+", p.read_text())}
    unknown = sorted(f"{file}: {var}" for file, var in named if var not in KNOWN_ENV)
    assert not unknown, f"not settings of bot/config.py: {unknown}"
    assert {v for _, v in named} >= {"IMAGINEBOT_METRICS_PORT", "IMAGINEBOT_REDIS_URL", "IMAGINEBOT_DISCORD_TOKEN"}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_basics() -> None:
    steps = dockerfile()
    instructions = [i for i, _ in steps]
    assert instructions.count("FROM") >= 2, "multi-stage: build tools stay out of the runtime image"
    users = [arg for i, arg in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image runs as a non-root user"
    health = [arg for i, arg in steps if i == "HEALTHCHECK"]
    assert health and "NONE" not in health[-1] and "healthcheck.py" in health[-1]
    assert (DEPLOY / "healthcheck.py").is_file()
    secretish = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE|CREDENTIAL)", re.IGNORECASE)
    for instruction, arg in steps:
        if instruction in {"ENV", "ARG"}:
            assert not secretish.search(arg), f"{instruction} {arg}: secrets come from the environment at run time"
        if instruction in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|keys|\.pem|\.key\b", arg), f"{instruction} {arg} copies a secret"
            if "--from=" not in arg:  # from the build context (the repository root), not another stage
                for source in arg.split()[:-1]:
                    assert (ROOT / source).exists(), f"{instruction} {source}: no such file"
    assert "/data" in next(arg for i, arg in steps if i == "VOLUME")
    ignore = [
        line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if not line.startswith("#")
    ]
    assert ignore[0] == "**", "the build context admits only what the image needs (no .venv, data or keys)"


def test_env_example_names_only_settings() -> None:
    text = (DEPLOY / "imaginebot.env.example").read_text()
    assert set(re.findall(r"\bIMAGINEBOT_[A-Z0-9_]+", text)) <= KNOWN_ENV
