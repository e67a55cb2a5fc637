"""Container images and Kubernetes manifests, checked offline (no Docker engine, no cluster)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving import configs
from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def _tool(name):
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed (it is in requirements.txt)"
    return found


def test_dockerfiles_pass_hadolint():
    dockerfiles = sorted((ROOT / "docker").glob("*.Dockerfile"))
    assert {d.name for d in dockerfiles} >= {"components.Dockerfile", "serving.Dockerfile", "gateway.Dockerfile",
                                            "dicom-node.Dockerfile"}
    for dockerfile in dockerfiles:
        proc = subprocess.run([_tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{dockerfile.name}:\n{proc.stdout}{proc.stderr}"


def test_kustomization_resources_validate_against_kubernetes_schemas():
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    files = [ROOT / "k8s" / r for r in kustomization["resources"]]
    assert {f.name for f in files} == {p.name for p in (ROOT / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    proc = subprocess.run([_tool("kubernetes-validate"), "-k", "1.30.0", "--strict", *map(str, files)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {yaml.safe_load(f.read_text())["kind"] for f in files}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= kinds


def test_model_server_reads_the_repository_this_product_writes():
    """TF Serving's flags name the config files serving.repository writes, in both places."""
    deployment = yaml.safe_load((ROOT / "k8s" / "tf-serving-deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    dockerfile = (ROOT / "docker" / "serving.Dockerfile").read_text()
    for flag in (f"--model_config_file=/models/{configs.MODELS_CONFIG}",
                 f"--batching_parameters_file=/models/{configs.BATCHING_CONFIG}", "--enable_batching=true"):
        assert flag in container["args"] and flag in dockerfile
    assert container["readinessProbe"] and container["resources"]["requests"]
    gateway = yaml.safe_load((ROOT / "k8s" / "gateway-deployment.yaml").read_text())["spec"]["template"]["spec"]
    assert gateway["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_pods_run_hardened_and_only_the_gateway_reaches_the_model_server():
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((ROOT / "k8s" / r).read_text()) for r in kustomization["resources"]]
    for name in ("tf-serving", "gateway"):
        pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        container = pod["containers"][0]["securityContext"]
        assert container == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                             "capabilities": {"drop": ["ALL"]}}
        probe = pod["containers"][0]["readinessProbe"]
        assert "resnet50" not in json.dumps(probe) and "histopathology" not in json.dumps(probe)   # no model's name
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "tf-serving-from-gateway-only"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "tf-serving"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}]
    assert "USER 65532" in (ROOT / "docker" / "serving.Dockerfile").read_text()


@pytest.mark.parametrize("image", ["gateway", "dicom-node"])
def test_the_thin_images_install_their_slice_of_the_lock(image):
    """requirements-<image>.txt pins exactly what requirements.txt pins, and no TensorFlow; the DICOM
    node's slice is also without Flask and the model server's client (it imports neither)."""
    lock = {line.split("==")[0].lower(): line for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line}
    pins = [line for line in (ROOT / f"requirements-{image}.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all(lock.get(line.split("==")[0].lower()) == line for line in pins), f"re-pin requirements-{image}.txt"
    names = {line.split("==")[0].lower() for line in pins}
    assert not names & {"tensorflow", "keras", "scipy", "scikit-learn"}
    if image == "dicom-node":
        assert not names & {"flask", "grpcio", "protobuf", "waitress"}
    assert f"requirements-{image}.txt" in (ROOT / "docker" / f"{image}.Dockerfile").read_text()


def test_nothing_is_anonymous_by_default_browsers_log_in_through_the_proxy():
    """The Ingress sends every path to oauth2-proxy (the login path), which forwards the user's
    token; the gateway checks tokens itself (GATEWAY_AUTH=oidc, the provider from the identity
    ConfigMap), keeps an audit with the PHI key from a Secret file, and takes requests only from
    the proxy and the DICOM node."""
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    docs = {(d["kind"], d["metadata"]["name"]): d for d in
            (yaml.safe_load((ROOT / "k8s" / r).read_text()) for r in kustomization["resources"])}
    ingress = docs[("Ingress", "bcimaging")]["spec"]
    backends = {p["backend"]["service"]["name"] for rule in ingress["rules"] for p in rule["http"]["paths"]}
    assert backends == {"oauth2-proxy"} and ingress["tls"]
    proxy = docs[("Deployment", "oauth2-proxy")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--pass-authorization-header=true" in proxy and any(a.startswith("--upstream=http://gateway") for a in proxy)
    gateway = docs[("Deployment", "gateway")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in gateway["containers"][0]["env"]}
    assert env["GATEWAY_AUTH"] == "oidc" and env["AUDIT_LOG"].startswith("/audit/")
    assert env["BCIMAGING_PHI_KEY_FILE"].startswith("/secrets/") and "BCIMAGING_PHI_KEY" not in env
    assert gateway["containers"][0]["envFrom"] == [{"configMapRef": {"name": "identity"}}]
    assert {"OIDC_ISSUER", "OIDC_AUDIENCE"} <= set(docs[("ConfigMap", "identity")]["data"])
    assert gateway["automountServiceAccountToken"] is False
    allowed = docs[("NetworkPolicy", "gateway-from-proxy-and-node")]["spec"]["ingress"][0]["from"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in allowed] == ["oauth2-proxy", "dicom-node"]
    text = "".join((ROOT / "k8s" / r).read_text() for r in kustomization["resources"])
    assert "--auth none" not in text and "GATEWAY_AUTH, value: none" not in text
