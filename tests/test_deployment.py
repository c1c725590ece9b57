"""Deployment on 127.0.0.1: certificates, and a SuperLink with SuperNodes over TLS with node auth.

The certificate tests are fast. The slow tests start one real `flower-superlink` in
deployment mode and real `flower-supernode` processes, each with its own Fashion-MNIST
images (one `.npz`, one image folder), and run the main job for two rounds.
"""

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from PIL import Image
from safetensors import safe_open

from fedgraft.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from fedgraft.data.node_data import class_folder_name
from fedgraft.server.certificates import CertificateFiles, create_certificates
from fedgraft.server.local_deployment import DeploymentError, LocalDeployment

REPO = Path(__file__).resolve().parents[1]
CERTIFICATES = [sys.executable, "-m", "fedgraft.server.certificates"]
RUN_TIMEOUT_S = 300
NODE_EXIT_TIMEOUT_S = 60
SAMPLES_PER_NODE = 60

SMALL_RUN = {
    "num-clients": 2, "rounds": 2, "max-samples-per-client": SAMPLES_PER_NODE, "test-samples": 200,
    "image-size": 32, "local-epochs": 1, "round-timeout": 120.0, "seed": 1,
}


def create_with_script(out_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CERTIFICATES, str(out_dir), *extra], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------------------
# Certificates and keys


def test_certificates_script_writes_all_files(tmp_path):
    result = create_with_script(tmp_path / "certs", "--node-keys", "2")
    files = CertificateFiles.in_folder(tmp_path / "certs", 2)

    assert result.returncode == 0, result.stderr
    for path in (files.ca_certificate, files.server_certificate, *files.node_public_keys):
        assert path.is_file()
    for path in (files.ca_key, files.server_key, *files.node_private_keys):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((tmp_path / "certs").glob(".*.tmp"))


def test_server_certificate_signed_by_ca_with_names(tmp_path):
    files = create_certificates(tmp_path, hostnames=["coordinator.example", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_certificate.read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.5"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "coordinator.example"]
    assert isinstance(load_pem_private_key(files.server_key.read_bytes(), None), ec.EllipticCurvePrivateKey)


def test_node_keys_load_as_flower_expects(tmp_path):
    # Flower 1.42's own loaders: flower-supernode reads the private key, flwr supernode
    # register the public key.
    from flwr.cli.supernode.register import try_load_public_key

    files = create_certificates(tmp_path, node_keys=1)
    private_key = load_ssh_private_key(files.node_private_keys[0].read_bytes(), None)
    public_pem = try_load_public_key(files.node_public_keys[0])

    assert isinstance(private_key, ec.EllipticCurvePrivateKey)
    assert private_key.curve.name == "secp384r1"
    assert files.node_public_keys[0].read_text().startswith("ecdsa-sha2-nistp384 ")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_existing_ca_kept_without_force(tmp_path):
    assert create_with_script(tmp_path).returncode == 0
    ca_before = (tmp_path / "ca.crt").read_bytes()

    refused = create_with_script(tmp_path)
    forced = create_with_script(tmp_path, "--force")

    assert refused.returncode == 2
    assert "already exists" in refused.stderr
    assert "--force" in refused.stderr
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "ca.crt").read_bytes() != ca_before


@pytest.mark.parametrize("arguments", [["--hostname", "bad name"], ["--hostname", "under_score.example"], ["--node-keys", "-1"]])
def test_invalid_arguments_exit_2(tmp_path, arguments):
    result = create_with_script(tmp_path / "certs", *arguments)

    assert result.returncode == 2
    assert "error: " in result.stderr
    assert not (tmp_path / "certs" / "ca.key").exists()


# ---------------------------------------------------------------------------------------
# A SuperLink and SuperNodes on 127.0.0.1


def export_node_data(root: Path) -> list[Path]:
    """Write two nodes' Fashion-MNIST samples: node 1 as an .npz, node 2 as an image folder."""
    train = load_fashion_mnist("train")
    order = np.random.default_rng(7).permutation(len(train.labels))
    first, second = order[:SAMPLES_PER_NODE], order[SAMPLES_PER_NODE:2 * SAMPLES_PER_NODE]

    npz_path = root / "node-1.npz"
    np.savez(npz_path, x=train.images[first], y=train.labels[first])

    folder = root / "node-2"
    for index in second:
        class_dir = folder / class_folder_name(FASHION_MNIST_CLASSES[int(train.labels[index])])
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(train.images[index]).save(class_dir / f"{index}.png")
    return [npz_path, folder]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    assert create_with_script(root / "certs", "--node-keys", "3").returncode == 0
    certificates = CertificateFiles.in_folder(root / "certs", 3)
    data_paths = export_node_data(root)

    deployment = LocalDeployment(root / "work", certificates)
    try:
        deployment.start_superlink()
        # Keys 1 and 2 are registered, and key 3 never is.
        for index, data_path in enumerate(data_paths):
            deployment.register_node(certificates.node_public_keys[index])
            deployment.start_supernode(
                f"supernode-{index + 1}",
                certificates.node_private_keys[index],
                {"data-path": str(data_path), "cache-dir": str(root / f"node-cache-{index + 1}")},
            )
        deployment.wait_for_online_nodes(len(data_paths), timeout=60)
        yield deployment
    finally:
        deployment.stop()


@pytest.mark.slow
def test_two_round_run_writes_run_directory(deployment, tmp_path):
    run_dir = tmp_path / "run"
    run_config = {**SMALL_RUN, "run-dir": str(run_dir), "cache-dir": str(tmp_path / "server-cache")}

    result = deployment.run_app(REPO, run_config, timeout=RUN_TIMEOUT_S)
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert result.returncode == 0, result.stdout[-4000:]
    assert config["num-clients"] == 2
    assert [record["round"] for record in metrics["rounds"]] == [0, 1, 2]
    assert all(record["nodes_trained"] == 2 for record in metrics["rounds"][1:])
    assert metrics["summary"]["rounds"] == 2
    assert metrics["summary"]["backbone_nodes_sent"] == 2
    assert 0.0 <= metrics["summary"]["final_test_accuracy"] <= 1.0
    with safe_open(run_dir / "model.safetensors", "pt") as handle:
        assert sorted(handle.keys()) == ["head.fc.bias", "head.fc.weight"]
    assert "run finished" in result.stdout


@pytest.mark.slow
def test_wrong_ca_supernode_exits_with_tls_error(deployment, tmp_path):
    other_ca = create_certificates(tmp_path / "other-ca")
    node = deployment.start_supernode(
        "wrong-ca", deployment.certificates.node_private_keys[0], {"data-path": "unused"},
        root_certificates=other_ca.ca_certificate,
    )

    exit_code = node.wait(timeout=NODE_EXIT_TIMEOUT_S)

    assert exit_code is not None, f"the SuperNode still runs after {NODE_EXIT_TIMEOUT_S} s"
    assert exit_code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in node.log_text()


@pytest.mark.slow
def test_unregistered_key_rejected(deployment):
    nodes_before = deployment.list_nodes()
    node = deployment.start_supernode(
        "unregistered", deployment.certificates.node_private_keys[2], {"data-path": "unused"}
    )

    exit_code = node.wait(timeout=NODE_EXIT_TIMEOUT_S)

    assert exit_code is not None, f"the SuperNode still runs after {NODE_EXIT_TIMEOUT_S} s"
    assert exit_code != 0
    assert "Failed to activate SuperNode" in node.log_text()
    assert "No SuperNode found with the given public key" in deployment.log_path.read_text()
    assert len(deployment.list_nodes()) == len(nodes_before)


@pytest.mark.slow
def test_register_rejects_non_key_file(deployment, tmp_path):
    not_a_key = tmp_path / "not-a-key.pub"
    not_a_key.write_text("hello\n")

    with pytest.raises(DeploymentError, match="flwr supernode register"):
        deployment.register_node(not_a_key)
