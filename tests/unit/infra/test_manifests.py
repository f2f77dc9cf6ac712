"""The deployment files under infra/ agree with the code they deploy.

Pure file checks: nothing is applied to a cluster or started. Ray's own Serve config
schema (ray.serve.schema) validates the Serve config, as `serve deploy` would.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel, ValidationError

from libs.common.definitions import parse_definitions
from libs.common.observability import metrics as signalops_metrics
from libs.common.settings import Settings
from services.ingest import spool as spool_metrics
from services.ingest.sources import metrics as polled_source_metrics

REPO = Path(__file__).resolve().parents[3]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
SERVE_CONFIG = INFRA / "serve" / "serve_config.yaml"
DASHBOARD = INFRA / "grafana" / "dashboards" / "signalops.json"
ALERTS = INFRA / "prometheus" / "alerts.yml"

YAML_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in INFRA.rglob(ext))
HAPROXY_DEFAULT_PORTS = {
    "RAY_SERVE_HAPROXY_METRICS_PORT": "9101",
    "RAY_SERVE_HAPROXY_STATS_PORT": "8404",
}
FOREIGN_METRIC_PREFIXES = ("ray_", "haproxy_")

Doc = dict[str, Any]


# --- reading the files --------------------------------------------------------------


def _load_all(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module", name="k8s")
def _k8s() -> list[Doc]:
    """Every object of the kustomization, plus the Secret template."""
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _load_all(p) if "kind" in d]


def _only(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(owner, pod template metadata, pod spec) of every Deployment and Ray node group."""
    for d in _of_kind(docs, "Deployment"):
        tpl = d["spec"]["template"]
        yield f"Deployment/{d['metadata']['name']}", tpl.get("metadata", {}), tpl["spec"]
    for d in _of_kind(docs, "RayService"):
        cluster = d["spec"]["rayClusterConfig"]
        groups = [("head", cluster["headGroupSpec"])]
        groups += [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
        for group, spec in groups:
            tpl = spec["template"]
            owner = f"RayService/{d['metadata']['name']}/{group}"
            yield owner, tpl.get("metadata", {}), tpl["spec"]


def _containers(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for owner, _, spec in _pod_specs(docs):
        for c in spec["containers"]:
            yield f"{owner}/{c['name']}", c


def _serve_configs(docs: list[Doc]) -> dict[str, Doc]:
    """The Serve configs: the `serve deploy` file and each RayService's serveConfigV2."""
    configs = {str(SERVE_CONFIG.relative_to(REPO)): yaml.safe_load(SERVE_CONFIG.read_text())}
    for d in _of_kind(docs, "RayService"):
        configs[f"RayService/{d['metadata']['name']}"] = yaml.safe_load(d["spec"]["serveConfigV2"])
    return configs


def _env_values(docs: list[Doc], container: Doc) -> dict[str, str | None]:
    """A container's environment: envFrom ConfigMaps, then env (None = from a Secret)."""
    env: dict[str, str | None] = {}
    for src in container.get("envFrom", []):
        env.update(_only(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def _all_env_names(docs: list[Doc]) -> dict[str, set[str]]:
    """Every environment variable name the manifests and Serve configs set, with where."""
    names: dict[str, set[str]] = {}
    for where, c in _containers(docs):
        for name in _env_values(docs, c):
            names.setdefault(name, set()).add(where)
    for where, config in _serve_configs(docs).items():
        for app in config["applications"]:
            for name in app.get("runtime_env", {}).get("env_vars", {}):
                names.setdefault(name, set()).add(f"{where} runtime_env")
    return names


def _default(field: str) -> Any:
    """A Settings field's default (not the environment's value)."""
    return Settings.model_fields[field].default


def _settings_has(var: str) -> bool:
    """True when SIGNALOPS_A__B names field a.b of Settings (nested models via __)."""
    parts = var.removeprefix("SIGNALOPS_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return False
            model = nested
    return True


# --- PromQL -------------------------------------------------------------------------

_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels, keywords, durations)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\w+", "", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group(0) in _PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def _known_series() -> set[str]:
    """Series names libs/common/observability/metrics.py (and the services' own metric
    modules that alerts read) expose."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    suffixes["summary"] = ["", "_sum", "_count"]
    series = set()
    for module in (signalops_metrics, polled_source_metrics, spool_metrics):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                for metric in obj.describe():
                    series.update(metric.name + s for s in suffixes[metric.type])
    return series


def _unknown_metrics(exprs: list[str], also: frozenset[str] = frozenset()) -> set[str]:
    known = _known_series() | also
    used = {n for e in exprs for n in _metric_names(e)}
    return {n for n in used if n not in known and not n.startswith(FOREIGN_METRIC_PREFIXES)}


# --- tests: files ---------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_infra_yaml_file_parses(path: Path) -> None:
    """Every YAML file under infra/ parses and holds at least one document."""
    assert _load_all(path), f"{path} holds no YAML document"


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    """kustomization.yaml names every manifest in infra/k8s, never the Secret template."""
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == {n for n in present if not n.endswith(".example.yaml")}
    assert all(_of_kind(_load_all(K8S / n), "Secret") == [] for n in listed)


def test_dockerfile_is_slim_non_root_and_copies_existing_paths() -> None:
    """The Dockerfile starts from python:3.11-slim, pip-installs the repo, ends non-root."""
    lines = [ln.strip() for ln in (INFRA / "docker" / "Dockerfile").read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert any("pip install ." in ln for ln in instructions)
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    for ln in instructions:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"


# --- tests: settings and environment ----------------------------------------------------


def test_every_signalops_env_var_is_a_settings_field(k8s: list[Doc]) -> None:
    """Each SIGNALOPS_* variable in manifests and Serve configs maps to a Settings field."""
    unknown = {
        name: sorted(where)
        for name, where in _all_env_names(k8s).items()
        if name.startswith("SIGNALOPS_") and not _settings_has(name)
    }
    assert not unknown, f"not fields of libs.common.settings.Settings: {unknown}"


def test_serve_application_args_are_settings_fields(k8s: list[Doc]) -> None:
    """The Serve application builder's args are Settings field names."""
    for where, config in _serve_configs(k8s).items():
        for app in config["applications"]:
            unknown = set(app.get("args", {})) - set(Settings.model_fields)
            assert not unknown, f"{where}: args {unknown} are not Settings fields"


def test_each_container_environment_builds_valid_production_settings(
    k8s: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every container's SIGNALOPS_* environment validates as production Settings."""
    for where, container in _containers(k8s):
        with monkeypatch.context() as m:
            for name in [n for n in os.environ if n.startswith("SIGNALOPS_")]:
                m.delenv(name)
            env = _env_values(k8s, container)
            secret = "s3cr3t-" + "x" * 32
            # Values from Secrets: the API keys Secret holds JSON, the others a token.
            from_secret = {
                "SIGNALOPS_API_KEYS": f'{{"client": {{"key": "{secret}k", "scopes": ["predict"]}}}}'
            }
            for name, value in env.items():
                if name.startswith("SIGNALOPS_"):
                    m.setenv(name, value if value is not None else from_secret.get(name, secret))
            try:
                settings = Settings()
            except ValidationError as exc:
                pytest.fail(f"{where}: {exc}")
            assert settings.environment == "production", where
            assert settings.definitions.is_absolute() and settings.data_dir.is_absolute(), where
            assert "SIGNALOPS_ADMIN_TOKEN" in env, f"{where} has no admin token"


def test_serve_runtime_env_matches_the_settings_configmap(k8s: list[Doc]) -> None:
    """The Serve runtime_env and the signalops-env ConfigMap agree on shared variables."""
    configmap = _only(k8s, "ConfigMap", "signalops-env")["data"]
    for where, config in _serve_configs(k8s).items():
        for app in config["applications"]:
            env_vars = app.get("runtime_env", {}).get("env_vars", {})
            differ = {k: (v, configmap[k]) for k, v in env_vars.items() if configmap.get(k, v) != v}
            assert not differ, f"{where}: runtime_env disagrees with signalops-env: {differ}"
            assert "SIGNALOPS_ADMIN_TOKEN" not in env_vars, f"{where}: a secret in runtime_env"
            assert "SIGNALOPS_API_KEYS" not in env_vars, f"{where}: a secret in runtime_env"


def test_definitions_configmap_is_a_valid_definitions_file(k8s: list[Doc]) -> None:
    """The definitions shipped in the ConfigMap pass the definitions validator."""
    data = _only(k8s, "ConfigMap", "signalops-definitions")["data"]
    definitions = parse_definitions(yaml.safe_load(data["signalops.yaml"]), origin="configmap")
    assert definitions.models


def test_definitions_and_data_dir_are_mounted_where_settings_point(k8s: list[Doc]) -> None:
    """SIGNALOPS_DEFINITIONS and SIGNALOPS_DATA_DIR paths are mounted in the pods using them."""
    configmap = _only(k8s, "ConfigMap", "signalops-env")["data"]
    definitions = Path(configmap["SIGNALOPS_DEFINITIONS"])
    data_dir = configmap["SIGNALOPS_DATA_DIR"]
    needs_data = ("features", "retrain", "RayService")
    for owner, _, spec in _pod_specs(k8s):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
            cm = mounts.get(str(definitions.parent), {}).get("configMap", {})
            assert cm.get("name") == "signalops-definitions", f"{owner}: no definitions mount"
            if any(k in owner for k in needs_data):
                claim = mounts.get(data_dir, {}).get("persistentVolumeClaim", {})
                assert claim.get("claimName") == "signalops-data", f"{owner}: {data_dir} unmounted"
    cm_file = _only(k8s, "ConfigMap", "signalops-definitions")["data"]
    assert definitions.name in cm_file


def test_referenced_configmaps_secrets_and_claims_exist(k8s: list[Doc]) -> None:
    """Every ConfigMap, Secret key and PVC a pod references is defined (Secrets: template)."""
    configmaps = {d["metadata"]["name"] for d in _of_kind(k8s, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in _of_kind(k8s, "PersistentVolumeClaim")}
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for d in _of_kind(k8s, "Secret")}
    for owner, _, spec in _pod_specs(k8s):
        for v in spec.get("volumes", []):
            configmap = v.get("configMap", {}).get("name")
            assert configmap is None or configmap in configmaps, (
                f"{owner}: no ConfigMap {configmap}"
            )
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            assert claim is None or claim in claims, f"{owner}: no PVC {claim}"
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in configmaps, owner
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), f"{owner}: {ref}"
    for rs in _of_kind(k8s, "RayService"):
        auth = rs["spec"]["rayClusterConfig"]["authOptions"]
        assert "auth_token" in secrets.get(auth["secretName"], set())


# --- tests: Ray Serve and KubeRay -------------------------------------------------------


def _unknown_keys(data: Doc, model: type[BaseModel]) -> set[str]:
    allowed = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    return set(data) - allowed


def test_serve_configs_are_valid_ray_serve_configs(k8s: list[Doc]) -> None:
    """Both Serve configs validate with Ray 2.60's schema and hold no unknown keys."""
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    for where, config in _serve_configs(k8s).items():
        ServeDeploySchema.model_validate(config)
        unknown = _unknown_keys(config, ServeDeploySchema)
        unknown |= _unknown_keys(config.get("http_options", {}), HTTPOptionsSchema)
        for app in config["applications"]:
            unknown |= _unknown_keys(app, ServeApplicationSchema)
            for dep in app.get("deployments", []):
                unknown |= _unknown_keys(dep, DeploymentSchema)
                unknown |= _unknown_keys(dep.get("ray_actor_options", {}), RayActorOptionsSchema)
        assert not unknown, f"{where}: keys Serve would silently ignore: {unknown}"
        assert config["http_options"]["host"] == "0.0.0.0", where
        assert config["http_options"]["port"] == _default("serve_port"), where
        assert [a["route_prefix"] for a in config["applications"]] == ["/"], where


def test_rayservice_serves_the_same_application_as_the_serve_config(k8s: list[Doc]) -> None:
    """The RayService's serveConfigV2 equals infra/serve/serve_config.yaml."""
    configs = list(_serve_configs(k8s).values())
    assert len(configs) == 2
    assert configs[0] == configs[1]


def test_serve_import_path_points_at_code_in_the_repo(k8s: list[Doc]) -> None:
    """The import path's module is a file in the repo that defines the builder at top level."""
    for where, config in _serve_configs(k8s).items():
        for app in config["applications"]:
            module, _, attr = app["import_path"].partition(":")
            path = REPO / (module.replace(".", "/") + ".py")
            assert path.is_file(), f"{where}: {module} is not a file in the repository"
            tree = ast.parse(path.read_text())
            defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
            defined |= {
                t.id
                for n in tree.body
                if isinstance(n, ast.Assign)
                for t in n.targets
                if isinstance(t, ast.Name)
            }
            assert attr in defined, f"{where}: {module} defines no {attr!r}"


def _serve_deployment_names() -> set[str]:
    """Names of the @serve.deployment classes in services/serve (name= or class name)."""
    names = set()
    for path in (REPO / "services" / "serve").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for dec in node.decorator_list:
                func = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(func, ast.Attribute) and func.attr == "deployment":
                    kw = {k.arg: k.value for k in getattr(dec, "keywords", [])}
                    name = kw.get("name")
                    names.add(name.value if isinstance(name, ast.Constant) else node.name)
    return names


def test_serve_deployment_overrides_name_existing_deployments(k8s: list[Doc]) -> None:
    """Deployment overrides name deployments defined in services/serve (else deploy fails)."""
    existing = _serve_deployment_names()
    for where, config in _serve_configs(k8s).items():
        for app in config["applications"]:
            named = {d["name"] for d in app.get("deployments", [])}
            assert named <= existing, f"{where}: {named - existing} not in services/serve"


def test_rayservice_sets_haproxy_ingress_env_on_head_and_every_worker_group(
    k8s: list[Doc],
) -> None:
    """Head and workers enable HAProxy + throughput mode and move HAProxy's ports alike."""
    seen = []
    for where, c in _containers(k8s):
        if not where.startswith("RayService/"):
            continue
        env = _env_values(k8s, c)
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", where
        assert env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1", where
        for var, default in HAPROXY_DEFAULT_PORTS.items():
            assert env.get(var) not in (None, default), f"{where}: {var} not moved"
        seen.append({k: v for k, v in env.items() if k.startswith("RAY_SERVE_")})
    assert len(seen) >= 2, "expected a head and at least one worker group"
    assert all(s == seen[0] for s in seen), "Ray node groups differ in RAY_SERVE_* settings"


def test_networkpolicy_closes_haproxy_stats_and_limits_metrics(k8s: list[Doc]) -> None:
    """A NetworkPolicy selects the Ray pods: stats port open to none, metrics to named sources."""
    ray_labels = [meta["labels"] for o, meta, _ in _pod_specs(k8s) if o.startswith("RayService/")]
    head = next(c for w, c in _containers(k8s) if w.startswith("RayService/"))
    env = _env_values(k8s, head)
    stats = int(env["RAY_SERVE_HAPROXY_STATS_PORT"])
    metrics = int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])
    policies = [
        p
        for p in _of_kind(k8s, "NetworkPolicy")
        if all(p["spec"]["podSelector"]["matchLabels"].items() <= lbl.items() for lbl in ray_labels)
    ]
    assert policies, "no NetworkPolicy selects every Ray pod"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        selector = policy["spec"]["podSelector"]
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            sources = rule.get("from", [])
            assert stats not in ports, "HAProxy stats port opened"
            if not ports:  # all ports: only for the Ray pods themselves
                assert sources and all(s == {"podSelector": selector} for s in sources), rule
            if metrics in ports:
                assert sources, "HAProxy metrics port opened to everyone"


def test_rayservice_uses_ray_token_authentication(k8s: list[Doc]) -> None:
    """The RayService enables token auth and nothing sets RAY_AUTH_MODE=disabled."""
    for rs in _of_kind(k8s, "RayService"):
        auth = rs["spec"]["rayClusterConfig"]["authOptions"]
        assert auth["mode"] == "token" and auth["secretName"]
    for where, c in _containers(k8s):
        assert _env_values(k8s, c).get("RAY_AUTH_MODE") in (None, "token"), where


def test_retrain_reaches_the_rayservice_head_with_its_token(k8s: list[Doc]) -> None:
    """Retrain's SIGNALOPS_RAY_ADDRESS is the RayService head Service's Ray Client port."""
    rs = _only(k8s, "RayService")
    retrain = _only(k8s, "Deployment", "signalops-retrain")["spec"]["template"]["spec"]
    container = retrain["containers"][0]
    env = {v["name"]: v for v in container["env"]}
    expected = f"ray://{rs['metadata']['name']}-head-svc:10001"
    assert env["SIGNALOPS_RAY_ADDRESS"]["value"] == expected
    token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["name"] == rs["spec"]["rayClusterConfig"]["authOptions"]["secretName"]
    assert env["RAY_AUTH_MODE"]["value"] == "token"


# --- tests: Kubernetes workloads --------------------------------------------------------


def test_every_deployment_has_probes_requests_and_limits(k8s: list[Doc]) -> None:
    """Each Deployment container has readiness and liveness probes, requests and limits."""
    deployments = _of_kind(k8s, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} >= {
        "signalops-ingest",
        "signalops-features",
        "signalops-retrain",
    }
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            where = f"{d['metadata']['name']}/{c['name']}"
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{where}: probes"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), where


def test_ray_containers_have_requests_and_limits(k8s: list[Doc]) -> None:
    """Ray head and worker containers declare CPU and memory requests and limits."""
    for where, c in _containers(k8s):
        if where.startswith("RayService/"):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where


def test_ingest_probes_readyz_and_healthz_on_its_port(k8s: list[Doc]) -> None:
    """Ingest's readiness probe hits /readyz and liveness /healthz on the ingest port."""
    c = _only(k8s, "Deployment", "signalops-ingest")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    port = int(_env_values(k8s, c)["SIGNALOPS_INGEST_PORT"] or 0)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == port
    assert _env_values(k8s, c)["SIGNALOPS_INGEST_HOST"] == "0.0.0.0"


def test_exec_probes_check_the_port_the_service_listens_on(k8s: list[Doc]) -> None:
    """Exec probes of features and retrain query their ops server's health endpoints
    (readiness /readyz, liveness /healthz) on the configured port."""
    for name, var in (
        ("signalops-features", "SIGNALOPS_FEATURES_METRICS_PORT"),
        ("signalops-retrain", "SIGNALOPS_RETRAIN_METRICS_PORT"),
    ):
        c = _only(k8s, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        port = _env_values(k8s, c)[var]
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            command = " ".join(c[probe]["exec"]["command"])
            assert f":{port}{path}" in command, f"{name} {probe}"


def test_services_select_deployment_pods_and_ports(k8s: list[Doc]) -> None:
    """Each Service selects a Deployment's pods and targets a port its container exposes."""
    for svc in _of_kind(k8s, "Service"):
        selector = svc["spec"]["selector"]
        matches = [
            (meta, spec)
            for owner, meta, spec in _pod_specs(k8s)
            if owner.startswith("Deployment/") and selector.items() <= meta["labels"].items()
        ]
        assert matches, f"Service {svc['metadata']['name']} selects no Deployment"
        exposed = {
            v
            for _, spec in matches
            for c in spec["containers"]
            for p in c.get("ports", [])
            for v in (p["name"], p["containerPort"])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in exposed, f"{svc['metadata']['name']}: {port}"


def test_every_container_runs_the_same_placeholder_image(k8s: list[Doc]) -> None:
    """All containers, Ray pods included, run one image (Ray Client needs equal versions)."""
    images = {c["image"] for _, c in _containers(k8s)}
    assert images == {"ghcr.io/your-org/signalops:0.1.0"}


# --- tests: observability ---------------------------------------------------------------


def test_promql_metric_name_extraction() -> None:
    """The PromQL scanner finds metric names and skips functions, labels and durations."""
    expr = (
        'histogram_quantile(0.95, sum by (le, service) (rate(a_bucket{x="y"}[5m])))'
        " / ignoring(x) b_total offset 10m > bool 1e3"
    )
    assert _metric_names(expr) == {"a_bucket", "b_total"}


def test_grafana_dashboard_queries_use_existing_metrics() -> None:
    """The dashboard is valid JSON whose queries use signalops, ray_ or haproxy_ metrics."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    panels += [p for row in panels for p in row.get("panels", [])]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 4
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        exprs += re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", text)
    assert not _unknown_metrics(exprs), "unknown metrics in the Grafana dashboard"
    titles = " ".join(p.get("title", "") for p in panels).lower()
    for topic in ("messages", "dead letters", "latency p95", "consumer lag"):
        assert topic in titles


def test_alert_rules_use_existing_metrics() -> None:
    """Alert expressions use signalops, ray_, haproxy_ metrics or Prometheus's `up`."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert not _unknown_metrics([r["expr"] for r in rules], also=frozenset({"up"}))
    used = {n for r in rules for n in _metric_names(r["expr"])}
    assert {"signalops_dead_letters_total", "signalops_consumer_lag"} <= used
    assert any(n.startswith("ray_serve_") for n in used), "no Serve alert"


def test_prometheus_scrapes_the_service_ports_and_ray_discovery() -> None:
    """prometheus.yml scrapes the default service ports, Ray's SD file and loads its rules."""
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t
        for job in config["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    ports = {int(t.rsplit(":", 1)[1]) for t in targets}
    defaults = {
        _default(f) for f in ("ingest_port", "features_metrics_port", "retrain_metrics_port")
    }
    assert defaults <= ports
    sd_files = [
        f
        for job in config["scrape_configs"]
        for sd in job.get("file_sd_configs", [])
        for f in sd["files"]
    ]
    assert any(f.endswith("/prom_metrics_service_discovery.json") for f in sd_files)
    for rules in config["rule_files"]:
        assert (INFRA / "prometheus" / rules).is_file()
    for job in config["scrape_configs"]:  # a target label "service" would clash with ours
        for sc in job.get("static_configs", []):
            assert "service" not in sc.get("labels", {}), job["job_name"]


def test_otel_collector_receives_otlp_http_and_wires_every_component() -> None:
    """The collector listens for OTLP/HTTP on 4318 and its pipelines use defined parts."""
    config = yaml.safe_load((INFRA / "otel" / "collector.yaml").read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for pipeline in config["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(section, [])) <= set(config.get(section, {})), section
        assert "debug" in pipeline["exporters"]
        assert any(e.startswith("otlp") for e in pipeline["exporters"])
