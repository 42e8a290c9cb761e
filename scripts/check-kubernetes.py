#!/usr/bin/env python3
"""Checks the Kubernetes manifests in deploy/kubernetes, offline.

Each overlay is built with `kubectl kustomize` (the real kustomize), every built resource of a
built-in kind is validated against the Kubernetes API schemas (kubernetes-validate, strict: no
unknown fields), and what a relay needs is checked field by field: hostNetwork, the TURN ports
(UDP, TCP unless listen-tcp is off, TLS when listen-tls is set), probes on /readyz and /healthz, a
preStop drain within the grace period, secrets and TLS certificates mounted as files,
capabilities (BPF and NET_ADMIN only with XDP, NET_BIND_SERVICE only for TLS below port 1024,
none for a user-space relay), and a ServiceMonitor and Service that find the relays. Prints one line per check; exits 1 on the first failure.

Needs kubectl (any version whose kustomize knows generatorOptions) and the PyPI packages
kubernetes-validate and PyYAML; scripts/setup.sh installs them.
"""

import pathlib
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
ADMIN_PORT = 9478


def port_of(address):
    return int(address.strip().rsplit(":", 1)[1])


def addresses(setting):
    """The addresses of a TOML list or a comma-separated string setting."""
    if isinstance(setting, str):
        return [address for address in setting.split(",") if address.strip()]
    return list(setting)


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def build(overlay):
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check(result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(resources, kind):
    found = [resource for resource in resources if resource["kind"] == kind]
    check(len(found) == 1, f"expected one {kind}, found {len(found)}")
    return found[0]


def validate_schemas(overlay, resources):
    for resource in resources:
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked field by field below
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise CheckFailed(f"{overlay}: {name}: {error.message} at {list(error.path)}")
        print(f"ok: {overlay}: {name} matches the Kubernetes {KUBERNETES_VERSION} schema")


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def check_workload(overlay, resources, kind, xdp):
    workload = by_kind(resources, kind)
    config = tomllib.loads(by_kind(resources, "ConfigMap")["data"]["turnpike.toml"])
    spec = workload["spec"]
    template = spec["template"]
    pod = template["spec"]
    labels = template["metadata"]["labels"]
    check(matches(spec["selector"]["matchLabels"], labels), f"{overlay}: selector misses the pods")
    check(pod.get("hostNetwork") is True, f"{overlay}: hostNetwork must be true")
    check(
        pod.get("dnsPolicy") == "ClusterFirstWithHostNet",
        f"{overlay}: dnsPolicy must be ClusterFirstWithHostNet with hostNetwork",
    )
    containers = pod["containers"]
    check(len(containers) == 1, f"{overlay}: one container expected")
    container = containers[0]
    ports = {port["name"]: port for port in container["ports"]}
    check(ports["admin"]["containerPort"] == ADMIN_PORT, f"{overlay}: admin port")
    check(ports["turn"]["protocol"] == "UDP", f"{overlay}: TURN is UDP")
    listen = addresses(config.get("listen", ["0.0.0.0:3478", "[::]:3478"]))
    check(
        {port_of(address) for address in listen} == {ports["turn"]["containerPort"]},
        f"{overlay}: the turn port must be the listen port",
    )
    # TURN over TCP: listen-tcp defaults to the listen addresses; "" turns it off.
    listen_tcp = addresses(config.get("listen-tcp", listen))
    if listen_tcp:
        tcp = ports.get("turn-tcp", {})
        check(
            tcp.get("protocol") == "TCP"
            and {port_of(address) for address in listen_tcp} == {tcp.get("containerPort")},
            f"{overlay}: TURN over TCP needs a TCP port named turn-tcp on the listen-tcp port",
        )
    else:
        check("turn-tcp" not in ports, f"{overlay}: turn-tcp declared, listen-tcp is off")
    listen_tls = addresses(config.get("listen-tls", ""))
    if listen_tls:
        tls = ports.get("turns", {})
        check(
            tls.get("protocol") == "TCP"
            and {port_of(address) for address in listen_tls} == {tls.get("containerPort")},
            f"{overlay}: TURN over TLS needs a TCP port named turns on the listen-tls port",
        )
    else:
        check("turns" not in ports, f"{overlay}: turns declared, listen-tls is unset")
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = container[probe]["httpGet"]
        check(get["path"] == path and get["port"] in ("admin", ADMIN_PORT), f"{overlay}: {probe}")
    env = {variable["name"]: variable for variable in container.get("env", [])}
    check(
        env["TURNPIKE_ADMIN_LISTEN"]["value"] == f"$(POD_IP):{ADMIN_PORT}",
        f"{overlay}: the admin endpoint must listen on the pod address for the probes",
    )
    check(
        "admin-token-file" in config,
        f"{overlay}: an admin endpoint beyond loopback needs admin-token-file",
    )
    for name in env:
        check(
            "SECRET" not in name or name.endswith("_FILE"),
            f"{overlay}: {name}: secrets come as files, not environment variables",
        )

    # Secrets as files, read-only, from the Secret.
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    secret_volumes = [name for name, volume in volumes.items() if "secret" in volume]
    check(secret_volumes, f"{overlay}: no secret volume")
    for name in secret_volumes:
        check(mounts[name].get("readOnly") is True, f"{overlay}: {name} must be mounted read-only")

    def in_secret(setting, secret):
        volume = next(
            (name for name in secret_volumes if volumes[name]["secret"]["secretName"] == secret),
            None,
        )
        check(volume in mounts, f"{overlay}: the Secret {secret} must be mounted")
        check(
            config[setting].startswith(mounts[volume]["mountPath"] + "/"),
            f"{overlay}: {setting} must be in the volume of the Secret {secret}",
        )

    for setting in ("secrets-file", "admin-token-file"):
        in_secret(setting, "turnpike-secrets")
    if listen_tls:
        for setting in ("tls-cert", "tls-key"):
            in_secret(setting, "turnpike-tls")
    config_volume = next(name for name, volume in volumes.items() if "configMap" in volume)
    check(
        f"--config={mounts[config_volume]['mountPath']}/turnpike.toml" in container["args"],
        f"{overlay}: --config must name the mounted turnpike.toml",
    )

    # Drain: preStop starts it and waits; the grace period covers it.
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    check("kill -TERM 1" in pre_stop, f"{overlay}: preStop must start the drain")
    grace = pod["terminationGracePeriodSeconds"]
    drain = config["drain-seconds"]
    check(
        drain < grace <= drain + 120,
        f"{overlay}: terminationGracePeriodSeconds {grace} must exceed drain-seconds {drain}",
    )

    # Privileges.
    security = container["securityContext"]
    check(security.get("allowPrivilegeEscalation") is False, f"{overlay}: privilege escalation")
    check(security.get("readOnlyRootFilesystem") is True, f"{overlay}: writable root")
    capabilities = security["capabilities"]
    check(capabilities["drop"] == ["ALL"], f"{overlay}: capabilities must drop ALL")
    low_port = any(port_of(address) < 1024 for address in listen + listen_tcp + listen_tls)
    if xdp:
        expected = ["BPF", "NET_ADMIN"] + (["NET_BIND_SERVICE"] if low_port else [])
        check(
            sorted(capabilities.get("add", [])) == expected,
            f"{overlay}: XDP needs exactly {' and '.join(expected)}",
        )
        check("TURNPIKE_XDP_INTERFACE" in env, f"{overlay}: XDP needs an interface")
    else:
        check(not capabilities.get("add"), f"{overlay}: a user-space relay needs no capability")
        check(
            not low_port,
            f"{overlay}: a relay without capabilities cannot bind a port below 1024",
        )
        check("TURNPIKE_XDP_INTERFACE" not in env, f"{overlay}: no XDP without capabilities")
        pod_security = pod.get("securityContext", {})
        check(pod_security.get("runAsNonRoot") is True, f"{overlay}: must run as non-root")
    print(f"ok: {overlay}: {kind} relays on the host network, probed, drained, least privilege")
    return labels


def check_monitoring(overlay, resources, pod_labels):
    service = by_kind(resources, "Service")
    monitor = by_kind(resources, "ServiceMonitor")
    check(service["spec"].get("clusterIP") == "None", f"{overlay}: the Service must be headless")
    check(matches(service["spec"]["selector"], pod_labels), f"{overlay}: Service misses the pods")
    check(service["metadata"]["name"] == "turnpike", f"{overlay}: the rules expect job=turnpike")
    check(
        matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]),
        f"{overlay}: the ServiceMonitor misses the Service",
    )
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        check(endpoint["port"] in service_ports, f"{overlay}: ServiceMonitor port")
        check(endpoint["path"] == "/metrics", f"{overlay}: ServiceMonitor path")
        credentials = endpoint["authorization"]["credentials"]
        check(
            credentials == {"name": "turnpike-secrets", "key": "admin-token"},
            f"{overlay}: the ServiceMonitor must present the admin token",
        )
    print(f"ok: {overlay}: the ServiceMonitor scrapes the relays' /metrics with the token")


def main():
    try:
        for overlay, kind, xdp in [
            ("daemonset", "DaemonSet", True),
            ("deployment", "Deployment", False),
        ]:
            resources = build(overlay)
            print(f"ok: kubectl kustomize {overlay}: {len(resources)} resources")
            validate_schemas(overlay, resources)
            labels = check_workload(overlay, resources, kind, xdp)
            check_monitoring(overlay, resources, labels)
            for resource in resources:
                if resource["kind"] != "Namespace":
                    check(
                        resource["metadata"].get("namespace") == "turnpike",
                        f"{overlay}: {resource['kind']} outside the turnpike namespace",
                    )
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print("kubernetes manifests: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
