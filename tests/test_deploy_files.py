"""Container images and Kubernetes manifests, checked offline (no Docker engine, no cluster)."""
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

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
        assert not names & {"flask", "grpcio", "protobuf"}
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


# --- the locked-down namespace -------------------------------------------------------------------

PODS = ("oauth2-proxy", "gateway", "tf-serving", "dicom-node")
# Base images whose published digest could not be recorded where these files were made (no
# registry reachable); pin them as docs/deployment.md#base-images says, then drop them here.
AWAITING_DIGEST = {"tensorflow/tensorflow:2.16.2-gpu", "tensorflow/serving:2.16.1"}


def _resources() -> list[dict]:
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    return [yaml.safe_load((ROOT / "k8s" / r).read_text()) for r in kustomization["resources"]]


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _resources() if d["kind"] == kind}


def _pods() -> dict[str, dict]:
    """Each Deployment's pod template by the app name its pods carry."""
    return {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: d["spec"]["template"]
            for d in _by_kind("Deployment").values()}


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are read here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _rules(pod: str, direction: str) -> list[dict] | None:
    """The rules of every policy that selects ``pod`` for ``direction`` (Ingress or Egress);
    None when no policy does (then everything is allowed that way)."""
    labels = _pods()[pod]["metadata"]["labels"]
    chosen = [p["spec"] for p in _by_kind("NetworkPolicy").values()
              if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)]
    return None if not chosen else [r for spec in chosen for r in spec.get(direction.lower(), [])]


def _port_allowed(rule: dict, port: int, protocol: str = "TCP") -> bool:
    return "ports" not in rule or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule["ports"])


def _allows(pod: str, direction: str, peer, port: int, protocol: str = "TCP") -> bool:
    """Whether the policies let ``pod`` take from (Ingress) or send to (Egress) ``peer`` on ``port``:
    peer is a pod's app name in this namespace, ("namespace", name) or ("cidr", network)."""
    rules = _rules(pod, direction)
    if rules is None:
        return True
    key = "from" if direction == "Ingress" else "to"

    def matches(entry: dict) -> bool:
        if isinstance(peer, str):
            return set(entry) == {"podSelector"} and _selects(entry["podSelector"], _pods()[peer]["metadata"]["labels"])
        kind, value = peer
        if kind == "namespace":
            return set(entry) == {"namespaceSelector"} and _selects(entry["namespaceSelector"],
                                                                    {"kubernetes.io/metadata.name": value})
        return "ipBlock" in entry and ipaddress.ip_network(value).subnet_of(ipaddress.ip_network(entry["ipBlock"]["cidr"]))

    return any(_port_allowed(r, port, protocol) and any(matches(e) for e in r.get(key, [{}])) for r in rules)


def _reaches(src: str, dst: str, port: int) -> bool:
    return _allows(src, "Egress", dst, port) and _allows(dst, "Ingress", src, port)


def _cidrs(policy: str, direction: str) -> set[str]:
    spec = _by_kind("NetworkPolicy")[policy]["spec"]
    key = "from" if direction == "ingress" else "to"
    return {e["ipBlock"]["cidr"] for r in spec.get(direction, []) for e in r[key] if "ipBlock" in e}


def test_namespace_enforces_the_restricted_pod_security_standard():
    (namespace,) = _by_kind("Namespace").values()
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_every_pod_complies_with_restricted_and_mounts_no_service_account_token():
    """What Pod Security restricted checks, for every container (init containers too), so a pod
    is not first refused by the cluster; and no pod holds a Kubernetes API credential."""
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    pods = _pods()
    assert set(pods) == set(PODS)
    for name, template in pods.items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert not any("serviceAccountToken" in json.dumps(v) for v in pod.get("volumes", [])), name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"].get("runAsUser", 1) != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= allowed_volumes, (name, volume)
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])
            assert not {"privileged", "runAsUser", "seccompProfile"} & set(context)
            assert all("hostPort" not in p for p in container.get("ports", []))
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert all(c.get("readinessProbe") and c.get("livenessProbe") for c in pod["containers"]), name


def test_default_deny_selects_every_pod_for_ingress_and_egress():
    policy = _by_kind("NetworkPolicy")["default-deny"]["spec"]
    assert policy == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for pod in PODS:     # so every pod is under a policy both ways, whatever the allows say
        assert _rules(pod, "Ingress") is not None and _rules(pod, "Egress") is not None


def test_pods_reach_each_other_only_along_the_request_path():
    """proxy -> gateway, DICOM node -> gateway, gateway -> model server (gRPC): every other pair
    and port of the namespace is refused, including the model server's REST port (no TLS)."""
    pods = _pods()
    ports = {p["containerPort"] for t in pods.values() for c in t["spec"]["containers"] for p in c.get("ports", [])}
    reached = {(src, dst, port) for src in PODS for dst in PODS for port in ports
               if src != dst and _reaches(src, dst, port)}
    assert reached == {("oauth2-proxy", "gateway", 8080), ("dicom-node", "gateway", 8080),
                       ("gateway", "tf-serving", 8500)}
    assert not _allows("tf-serving", "Ingress", "gateway", 8501)
    for _, dst, port in reached:
        assert port in {p["containerPort"] for c in pods[dst]["spec"]["containers"] for p in c["ports"]}


def test_only_the_ingress_controller_the_pacs_and_the_identity_provider_cross_the_namespace():
    ingress_nginx = ("namespace", "ingress-nginx")
    assert [p for p in PODS if _allows(p, "Ingress", ingress_nginx, 4180)] == ["oauth2-proxy"]
    assert not any(_allows(p, "Ingress", ingress_nginx, 8080) for p in PODS)     # never the gateway directly
    # the PACS: one set of addresses, into the node's DIMSE and STOW-RS ports and out to the PACS
    pacs = _cidrs("dicom-node", "ingress")
    assert len(pacs) == 1 and pacs <= _cidrs("dicom-node", "egress")
    (pacs,) = pacs
    service = _by_kind("Service")["dicom-node"]["spec"]
    assert service["loadBalancerSourceRanges"] == [pacs] and service["externalTrafficPolicy"] == "Local"
    assert [p for p in PODS if _allows(p, "Ingress", ("cidr", pacs), 11112)] == ["dicom-node"]
    assert _allows("dicom-node", "Ingress", ("cidr", pacs), 8090)
    assert _allows("dicom-node", "Egress", ("cidr", pacs), 443)
    # the identity provider: one set of addresses, HTTPS, from the three that check or get tokens
    identity = _cidrs("oauth2-proxy", "egress")
    assert len(identity) == 1 and identity == _cidrs("gateway-to-model-server-and-identity", "egress")
    assert identity <= _cidrs("dicom-node", "egress")
    (identity,) = identity
    assert [p for p in PODS if _allows(p, "Egress", ("cidr", identity), 443)] == ["oauth2-proxy", "gateway", "dicom-node"]
    # DNS for everyone, nothing else out of the model server
    for pod in PODS:
        for protocol in ("UDP", "TCP"):
            assert _allows(pod, "Egress", ("namespace", "kube-system"), 53, protocol), pod
        assert not _allows(pod, "Egress", ("namespace", "kube-system"), 443)
    assert not _allows("tf-serving", "Egress", ("cidr", "0.0.0.0/0"), 443)


def test_the_dicom_node_runs_from_its_own_image_behind_its_service():
    """Its Deployment and Service exist; its arguments and environment parse as the node's own
    command line, with identity checks on, the audit, the PHI key as a file, TLS from files."""
    from dicom_node.__main__ import build_parser

    deployment = _by_kind("Deployment")["dicom-node"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 1 and container["image"] == "bcimaging/dicom-node"
    assert "bcimaging/dicom-node" in {i["name"] for i in
                                      yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["images"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "BCIMAGING_PHI_KEY" not in env and env["BCIMAGING_PHI_KEY_FILE"].startswith("/secrets/phi/")
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if v is not None}, clear=True):
        args = build_parser().parse_args(container["args"])
    assert args.auth == "oidc" and args.host == "0.0.0.0" and args.sender and args.audit_log.startswith("/audit/")
    assert args.store_to[1].startswith("https://") and args.pacs_auth and args.client_secret_file.startswith("/secrets/")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for var in ("DICOM_TLS_CERT", "DICOM_TLS_KEY", "DICOM_TLS_CA", "PACS_TLS_CERT", "PACS_TLS_KEY", "PACS_TLS_CA"):
        folder = env[var].rsplit("/", 1)[0]
        assert volumes[mounts[folder]]["secret"]["secretName"] == "dicom-node-tls"
        assert getattr(args, var.lower()) == env[var]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["dimse"], ports["stow"]) == (args.dicom_port, args.http_port) == (11112, 8090)
    service = _by_kind("Service")["dicom-node"]["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "dicom-node"}
    assert {p["targetPort"] for p in service["ports"]} == {"dimse", "stow"}
    exposed = re.search(r"^EXPOSE (.+)$", (ROOT / "docker" / "dicom-node.Dockerfile").read_text(), re.M).group(1)
    assert set(exposed.split()) == {"11112", "8090"}


def _certificates() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "cert-manager" / "certificates.yaml").read_text()))
    assert all(d["apiVersion"] == "cert-manager.io/v1" for d in docs)
    issuers = {d["metadata"]["name"] for d in docs if d["kind"] == "Issuer"}
    cluster_issuer = _by_kind("Ingress")["bcimaging"]["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    certificates = {d["spec"]["secretName"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    for spec in certificates.values():
        ref = spec["issuerRef"]
        assert ref["name"] in issuers if ref["kind"] == "Issuer" else (ref["kind"], ref["name"]) == ("ClusterIssuer", cluster_issuer)
    return certificates


def _ssl_config_message():
    """TF Serving's SSLConfig (tensorflow_serving/config/ssl_config.proto), declared here."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fields = [("server_key", 1, "TYPE_STRING"), ("server_cert", 2, "TYPE_STRING"), ("custom_ca", 3, "TYPE_STRING"),
              ("client_verify", 4, "TYPE_BOOL")]
    proto = descriptor_pb2.FileDescriptorProto(name="ssl_config.proto", package="tensorflow.serving", syntax="proto3")
    message = proto.message_type.add(name="SSLConfig")
    for name, number, kind in fields:
        message.field.add(name=name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, kind),
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def _pem_files(folder: Path) -> dict[str, str]:
    """A CA and a certificate it signed, as cert-manager writes them into a Secret."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(name, key, issuer, issuer_key):
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {"ca.crt": certificate("ca", ca_key, "ca", ca_key), "tls.crt": certificate("tf-serving", key, "ca", ca_key),
             "tls.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode()}
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


def test_the_model_server_speaks_mutual_tls_from_cert_manager_secrets(tmp_path):
    """TF Serving's --ssl_config_file is written at pod start from the cert-manager Secret: the
    init step's script, run here on PEM files, gives an SSLConfig that parses as TF Serving's
    message with those very PEM texts and client_verify on. The gateway presents a certificate
    from the same issuer, and the server's certificate names the address the gateway dials."""
    from google.protobuf import text_format

    from gateway.__main__ import build_parser

    certificates = _certificates()
    tf_pod = _pods()["tf-serving"]["spec"]
    (init,) = tf_pod["initContainers"]
    (server,) = tf_pod["containers"]
    init_env = {e["name"]: e["value"] for e in init["env"]}
    assert f"--ssl_config_file={init_env['SSL_CONFIG']}" in server["args"]
    volumes = {v["name"]: v for v in tf_pod["volumes"]}
    tls_volume = next(m["name"] for m in init["volumeMounts"] if m["mountPath"] == init_env["TLS_DIR"])
    ssl_volume = next(m["name"] for m in server["volumeMounts"] if init_env["SSL_CONFIG"].startswith(m["mountPath"] + "/"))
    assert volumes[ssl_volume]["emptyDir"]["medium"] == "Memory"      # the key is never written to disk
    server_secret = volumes[tls_volume]["secret"]["secretName"]

    files = _pem_files(tmp_path)
    out = tmp_path / "ssl.config"
    subprocess.run([*init["command"], *init["args"]], check=True, env={"PATH": os.environ["PATH"],
                                                                       "TLS_DIR": str(tmp_path), "SSL_CONFIG": str(out)})
    config = text_format.Parse(out.read_text(), _ssl_config_message()())
    assert (config.server_key, config.server_cert, config.custom_ca) == (files["tls.key"], files["tls.crt"], files["ca.crt"])
    assert config.client_verify is True
    assert out.stat().st_mode & 0o077 == 0

    gateway_pod = _pods()["gateway"]["spec"]
    (gateway,) = gateway_pod["containers"]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if v is not None}, clear=True):
        args = build_parser().parse_args([])
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    client_secret = {v["name"]: v for v in gateway_pod["volumes"]}[mounts["/tls/serving"]]["secret"]["secretName"]
    assert (args.serving_tls_cert, args.serving_tls_key, args.serving_tls_ca) == \
        ("/tls/serving/tls.crt", "/tls/serving/tls.key", "/tls/serving/ca.crt")
    host = args.serving.rsplit(":", 1)[0]
    assert host in certificates[server_secret]["dnsNames"] and "server auth" in certificates[server_secret]["usages"]
    assert "client auth" in certificates[client_secret]["usages"]
    assert certificates[client_secret]["issuerRef"] == certificates[server_secret]["issuerRef"]


def test_every_tls_secret_a_pod_mounts_comes_from_a_certificate():
    certificates = _certificates()
    hand_made = {"phi-key", "dicom-node", "oauth2-proxy"}      # the hospital creates these (docs/deployment.md)
    mounted = {v["secret"]["secretName"] for t in _pods().values() for v in t["spec"].get("volumes", []) if "secret" in v}
    assert mounted - hand_made <= set(certificates) and mounted - hand_made
    assert _by_kind("Ingress")["bcimaging"]["spec"]["tls"][0]["secretName"] not in mounted


def test_the_ingress_ends_tls_redirects_plain_http_and_sends_hsts():
    annotations = _by_kind("Ingress")["bcimaging"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    namespace, name = annotations["nginx.ingress.kubernetes.io/custom-headers"].split("/")
    assert namespace == yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["namespace"]
    hsts = _by_kind("ConfigMap")[name]["data"]["Strict-Transport-Security"]
    assert int(re.search(r"max-age=(\d+)", hsts).group(1)) >= 31536000 and "includeSubDomains" in hsts


def test_every_base_image_is_pinned_by_digest():
    """FROM image:tag@sha256:<64 hex>: the tag for people, the digest for the build."""
    seen = set()
    for dockerfile in sorted((ROOT / "docker").glob("*.Dockerfile")):
        for image in re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", dockerfile.read_text(), re.M):
            seen.add(image)
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image) or image in AWAITING_DIGEST, \
                f"{dockerfile.name}: pin {image} by digest (docs/deployment.md#base-images)"
    assert AWAITING_DIGEST <= seen, "a base image listed as awaiting its digest is gone: drop it from the list"


IMAGE_ROOTS = {"gateway": ("gateway",), "dicom-node": ("dicom_node",)}
OWN = ("components", "serving", "gateway", "dicom_node", "pipelines")


def _imported_distributions(roots: tuple[str, ...], pinned: set[str]) -> set[str]:
    """The distributions whose modules the image's code imports, at any depth of its own modules
    (imports inside functions included: grimp sees them). A namespace shared by several
    distributions (``google``: protobuf and the cloud clients) names the pinned ones among them."""
    import importlib.metadata

    import grimp

    graph = grimp.build_graph(*OWN, include_external_packages=True)
    owners = importlib.metadata.packages_distributions()
    seen, stack, external = set(), [m for m in graph.modules if m.split(".")[0] in roots], set()
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            if top in OWN:
                stack.append(imported)
            elif top not in sys.stdlib_module_names:
                external.add(top)
    found = set()
    for top in external:
        candidates = {_canonical(d) for d in owners.get(top, [top])}
        found |= candidates & pinned if len(candidates) > 1 else candidates
    return found


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements_closure(names: set[str]) -> set[str]:
    """``names`` and every distribution they require on this platform, by their metadata."""
    import importlib.metadata

    from packaging.requirements import Requirement

    closure, stack = set(), list(names)
    while stack:
        name = _canonical(stack.pop())
        if name in closure:
            continue
        closure.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(requirement.name)
    return closure


@pytest.mark.parametrize("image", sorted(IMAGE_ROOTS))
def test_each_thin_image_pins_everything_its_code_imports(image):
    """The node's slice once lacked waitress and, with HTTPS, Hypercorn: its image would have
    failed at start while every test here passed (the whole lock is installed for the tests)."""
    pinned = {_canonical(line.split("==")[0]) for line in (ROOT / f"requirements-{image}.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    needed = _requirements_closure(_imported_distributions(IMAGE_ROOTS[image], pinned))
    assert not needed - pinned, f"requirements-{image}.txt lacks {sorted(needed - pinned)}"
