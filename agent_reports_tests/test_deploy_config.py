"""The deploy/ artefacts, checked with what runs here (there is no Docker engine and no
Kubernetes cluster on this machine):

- docker-compose.yml against the Compose Specification JSON schema;
- helm/values.yaml against the Dagster chart's values.schema.json, its Kubernetes types
  resolved to the Kubernetes definitions (deploy/schemas/README.md says where each comes from);
- the Dockerfile with hadolint;
- each instance yaml loaded by Dagster itself (`DagsterInstance`) on a real PostgreSQL
  database, with the same pools, queue, retries and monitoring as the repository's
  dagster.yaml.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from agent_reports_tests.conftest import BIN

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_REMOTE = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- compose


def compose_validator() -> jsonschema.Draft202012Validator:
    """The Compose Specification schema shipped by check-jsonschema."""
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return jsonschema.Draft202012Validator(json.loads(schema_file.read_text()))


def test_compose_file_is_valid_compose_spec() -> None:
    validator = compose_validator()
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    errors = [e.message for e in validator.iter_errors(compose)]
    assert errors == []

    # The schema is strict enough to catch a misspelt service key.
    broken = copy.deepcopy(compose)
    broken["services"]["webserver"]["restart_policy"] = "always"
    assert not validator.is_valid(broken)


def test_compose_stack_shape() -> None:
    """PostgreSQL, code server, webserver and daemon; only the webserver is published, on the
    host's loopback; run containers join the network and volume the launcher names."""
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"postgres", "user_code", "webserver", "daemon"}
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert list(published) == ["webserver"]
    assert all(str(p).startswith("127.0.0.1:") for p in published["webserver"])
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert "/var/run/docker.sock:/var/run/docker.sock" in services["daemon"]["volumes"]

    instance = load_yaml(DEPLOY / "dagster.compose.yaml")
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    network_names = {n.get("name", key) for key, n in compose["networks"].items()}
    assert launcher["config"]["network"] in network_names
    volume_names = {(v or {}).get("name", key) for key, v in compose["volumes"].items()}
    for mount in launcher["config"]["container_kwargs"]["volumes"]:
        assert mount.split(":")[0] in volume_names
    # Every variable the launcher forwards to runs is set on the daemon that launches them.
    daemon_env = set(services["daemon"]["environment"])
    assert set(launcher["config"]["env_vars"]) <= daemon_env
    # Runs start from the code server's own image.
    image = services["user_code"]["environment"]["DAGSTER_CURRENT_IMAGE"]
    assert image == services["user_code"]["image"]

    workspace = load_yaml(DEPLOY / "workspace.compose.yaml")
    server = workspace["load_from"][0]["grpc_server"]
    assert server["host"] == "user_code" and server["port"] == 4000


# -------------------------------------------------------------------------------- helm


def kubernetes_definitions() -> dict:
    """The newest strict Kubernetes definitions kubernetes-validate ships, addressable both as
    `#/definitions/...` (how the chart schema points at them) and `#/$defs/...` (their own)."""
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    versions = [p.name for p in folder.iterdir() if p.name.endswith("-local-strict")]
    newest = max(versions, key=lambda v: tuple(int(x) for x in v[1:].split("-")[0].split(".")))
    document = json.loads((folder / newest / "_definitions.json").read_text())
    document.pop("$id", None)
    document["definitions"] = document["$defs"]
    return document


def _inline(node: Any, definitions: dict) -> Any:
    """The schema with its local `#/definitions/X` references replaced by their content."""
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref", "")
    if ref.startswith("#/definitions/"):
        target = _inline(definitions[ref.removeprefix("#/definitions/")], definitions)
        rest = {k: _inline(v, definitions) for k, v in node.items() if k != "$ref"}
        return {**target, **rest}
    return {k: _inline(v, definitions) for k, v in node.items()}


def _as_override(node: Any, in_list: bool = False) -> Any:
    """Model Helm's merge of the values file over the chart's defaults: maps are merged (the
    defaults supply their required keys), lists replace the defaults whole (their items must
    be complete). So `required` is dropped outside list items and kept inside them."""
    if isinstance(node, list):
        return [_as_override(item, in_list) for item in node]
    if not isinstance(node, dict):
        return node
    result = {}
    for key, value in node.items():
        if key == "required" and not in_list:
            continue
        if key == "items":
            result[key] = _as_override(value, True)
        elif key in ("$ref", "enum", "const"):
            result[key] = value
        else:
            result[key] = _as_override(value, in_list)
    return result


def helm_validator() -> jsonschema.Draft202012Validator:
    chart_schema = json.loads((DEPLOY / "schemas" / "dagster-helm-values.schema.json").read_text())
    schema = _as_override(_inline(chart_schema, chart_schema["definitions"]))
    registry = Registry().with_resource(
        K8S_REMOTE, Resource.from_contents(kubernetes_definitions(), DRAFT202012)
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def helm_errors(validator: jsonschema.Draft202012Validator, values: Any) -> list[str]:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(values)]
    # The chart's `concurrency` key is newer than the schema snapshot: checked on its own.
    concurrency_schema = DEPLOY / "schemas" / "dagster-helm-concurrency.schema.json"
    concurrency = jsonschema.Draft202012Validator(json.loads(concurrency_schema.read_text()))
    errors += [f"concurrency: {e.message}" for e in concurrency.iter_errors(values["concurrency"])]
    return errors


def test_helm_values_are_valid_for_the_dagster_chart() -> None:
    validator = helm_validator()
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    assert helm_errors(validator, values) == []

    # The same validator rejects what the chart would: a misspelt daemon key, a code
    # location without its port, a Kubernetes SecretEnvSource with an unknown field.
    typo = copy.deepcopy(values)
    queued = typo["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    queued["dequeueUseThread"] = queued.pop("dequeueUseThreads")
    assert helm_errors(validator, typo)
    no_port = copy.deepcopy(values)
    del no_port["dagster-user-deployments"]["deployments"][0]["port"]
    assert any("'port' is a required property" in e for e in helm_errors(validator, no_port))
    bad_pool = copy.deepcopy(values)
    bad_pool["concurrency"]["pools"]["default_limit"] = 1
    assert helm_errors(validator, bad_pool)
    bad_secret = copy.deepcopy(values)
    bad_secret["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"] = [{"secret": "x"}]
    assert helm_errors(validator, bad_secret)


def test_helm_values_use_the_k8s_launcher_queue_and_secrets() -> None:
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    deployment = values["dagster-user-deployments"]["deployments"][0]
    # The API key reaches the code server and the run pods from a Kubernetes Secret only.
    assert {"name": "agent-reports-secrets"} in launcher["envSecrets"]
    assert {"name": "agent-reports-secrets"} in deployment["envSecrets"]
    assert "OPENAI_API_KEY" not in yaml.safe_dump(values).replace("# ", "")
    assert deployment["port"] == 4000
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_code_server_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    # Logical instructions: comments dropped, continued lines joined.
    physical = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    lines = [" ".join(i.split()) for i in "\n".join(physical).replace("\\\n", " ").splitlines()]
    lines = [line for line in lines if line]
    assert lines[0] == "FROM python:3.11-slim"
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert "EXPOSE 4000" in lines
    cmd = json.loads(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))
    assert cmd[:3] == ["dagster", "code-server", "start"] and cmd[cmd.index("-p") + 1] == "4000"
    # Every file the build copies exists in the repository (the context is the repo root).
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


# ---------------------------------------------------------------------- instance configs


def _policy(instance) -> dict:
    """What the deploy configs promise to keep equal to the repository's dagster.yaml."""
    concurrency = instance.get_concurrency_config()
    return {
        "coordinator": type(instance.run_coordinator).__name__,
        "max_concurrent_runs": concurrency.run_queue_config.max_concurrent_runs,
        "pool_granularity": concurrency.pool_config.pool_granularity,
        "pool_default_limit": concurrency.pool_config.default_pool_limit,
        "run_retries": (
            instance.run_retries_enabled,
            instance.run_retries_max_retries,
            instance.run_retries_retry_on_asset_or_op_failure,
        ),
        "run_monitoring": (
            instance.run_monitoring_enabled,
            instance.run_monitoring_start_timeout_seconds,
            instance.run_monitoring_cancel_timeout_seconds,
            instance.run_monitoring_max_runtime_seconds,
        ),
    }


def _instance(home: Path, config: dict):
    from dagster import DagsterInstance

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home))


@pytest.fixture
def reference_policy(tmp_path: Path) -> dict:
    instance = _instance(tmp_path / "reference_home", load_yaml(ROOT / "dagster.yaml"))
    try:
        return _policy(instance)
    finally:
        instance.dispose()


@pytest.mark.parametrize("name", ["dagster.compose.yaml", "dagster.yaml"])
def test_deploy_instance_loads_on_postgres(
    name: str,
    tmp_path: Path,
    postgres_db: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    reference_policy: dict,
) -> None:
    """Dagster loads the file as its instance, creates its storage in a real PostgreSQL
    database, and ends up with the same queue/pool/retry/monitoring policy as dagster.yaml."""
    for key, value in postgres_db.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY / name, home / "dagster.yaml")
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert list(instance.get_runs()) == []  # a real round trip to the new tables
        if name == "dagster.compose.yaml":
            assert type(instance.run_launcher).__name__ == "DockerRunLauncher"
        assert _policy(instance) == reference_policy
    finally:
        instance.dispose()


def render_helm_k8s_launcher(values: dict, kubeconfig: Path) -> dict:
    """The K8sRunLauncher section the chart renders from runLauncher.config.k8sRunLauncher,
    pointed at a kubeconfig file instead of the in-cluster config (there is no cluster here:
    the launcher loads its client configuration but never calls the API)."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "module": "dagster_k8s",
        "class": "K8sRunLauncher",
        "config": {
            "load_incluster_config": False,
            "kubeconfig_file": str(kubeconfig),
            "instance_config_map": "dagster-instance",
            "service_account_name": "dagster",
            "image_pull_policy": k8s["imagePullPolicy"],
            "env_config_maps": [c["name"] for c in k8s["envConfigMaps"]],
            "env_secrets": [s["name"] for s in k8s["envSecrets"]],
            "env_vars": k8s["envVars"],
            "volume_mounts": k8s["volumeMounts"],
            "volumes": k8s["volumes"],
            "resources": k8s["resources"],
        },
    }


def write_kubeconfig(path: Path) -> Path:
    """A kubeconfig for a cluster that does not exist (nothing connects to it)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "none", "user": {"token": "not-a-token"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    return path


def render_helm_instance_policy(values: dict) -> dict:
    """The policy part of the dagster.yaml the chart renders from these values, following
    helm/dagster/templates/configmap-instance.yaml and the newest `dagsterYaml.runCoordinator.
    queued` helper: the queued run coordinator (max_concurrent_runs left out when
    `concurrency.enabled` and unset), schedules/sensors, telemetry, `concurrency` in snake
    case, then additionalInstanceConfig appended verbatim. Storage and the K8s launcher need a
    cluster and are left out."""
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    concurrency = values["concurrency"]
    snake = {"maxConcurrentRuns": "max_concurrent_runs", "dequeueUseThreads": "dequeue_use_threads",
             "dequeueIntervalSeconds": "dequeue_interval_seconds",
             "defaultLimit": "default_limit", "granularity": "granularity"}  # fmt: skip
    coordinator = {snake[k]: v for k, v in queued.items() if v is not None}
    if "max_concurrent_runs" not in coordinator and not concurrency["enabled"]:
        coordinator["max_concurrent_runs"] = -1
    config: dict = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": coordinator,
        },
        "schedules": {"use_threads": True, "num_workers": daemon["schedules"]["numWorkers"]},
        "sensors": {"use_threads": True, "num_workers": daemon["sensors"]["numWorkers"]},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }
    if concurrency["enabled"]:
        config["concurrency"] = {
            "pools": {snake[k]: v for k, v in concurrency["pools"].items()},
            "runs": {snake[k]: v for k, v in concurrency["runs"].items()},
        }
    for section in ("runMonitoring", "runRetries"):
        assert not daemon[section]["enabled"], f"{section} would duplicate a section below"
    duplicated = set(config) & set(values["additionalInstanceConfig"])
    assert not duplicated, f"sections rendered twice: {duplicated}"
    config.update(values["additionalInstanceConfig"])
    return config


def test_helm_instance_policy_matches_dagster_yaml(tmp_path: Path, reference_policy: dict) -> None:
    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    config = render_helm_instance_policy(values)
    config["run_launcher"] = render_helm_k8s_launcher(values, write_kubeconfig(tmp_path / "kube"))
    instance = _instance(tmp_path / "helm_home", config)
    try:
        assert type(instance.run_launcher).__name__ == "K8sRunLauncher"
        assert instance.run_launcher.supports_resume_run
        assert _policy(instance) == reference_policy
        assert instance.run_monitoring_max_resume_run_attempts == 2
    finally:
        instance.dispose()


def test_helm_run_ceiling_belongs_in_concurrency_not_the_coordinator(tmp_path: Path) -> None:
    """The trap the values avoid: a run ceiling on the run coordinator as well as a
    `concurrency` section is refused by Dagster when the instance loads."""
    from dagster._core.errors import DagsterInvalidConfigError

    values = load_yaml(DEPLOY / "helm" / "values.yaml")
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    queued["maxConcurrentRuns"] = 4
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        _instance(tmp_path / "helm_home", render_helm_instance_policy(values))
