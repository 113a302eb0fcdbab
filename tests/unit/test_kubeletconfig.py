"""Reading a kubelet's MemoryQoS settings from the files kubelets and kubeadm write."""

from __future__ import annotations

import re

import pytest
import yaml

from memwarden.kubeletconfig import (
    KubeletConfigError,
    KubeletMemoryConfig,
    kubelet_rejects,
    parse_feature_gates,
    parse_kubelet_config,
)
from memwarden.sizing import KubeletProfile
from memwarden_testing.cluster import REPO

pytestmark = pytest.mark.unit

EXAMPLES = REPO / "examples" / "kubelet"


def config(**fields: object) -> str:
    return yaml.safe_dump(
        {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", **fields}
    )


def test_the_kubelet_file_example() -> None:
    text = (EXAMPLES / "config.yaml").read_text()
    assert parse_kubelet_config(text, source="config.yaml") == KubeletMemoryConfig(
        memory_qos=True, memory_throttling_factor=0.9, memory_reservation_policy="TieredReservation"
    )


def test_kubeadms_configmap_example() -> None:
    text = (EXAMPLES / "kubeadm-kubelet-config.yaml").read_text()
    got = parse_kubelet_config(text, source="cm.yaml")
    assert got == KubeletMemoryConfig(memory_qos=True, memory_throttling_factor=0.8)
    assert got.settings() == {"memoryQoS": True, "memoryThrottlingFactor": 0.8}


def test_a_kubeadm_config_file_skips_kubeadms_own_kinds() -> None:
    text = "\n---\n".join(
        [
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n",
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n",
            config(memoryReservationPolicy="TieredReservation", featureGates={"MemoryQoS": True}),
        ]
    )
    got = parse_kubelet_config(text, source="kubeadm.yaml")
    assert got.settings() == {"memoryQoS": True, "memoryReservationPolicy": "TieredReservation"}


def test_unset_fields_stay_unset_and_other_fields_are_ignored() -> None:
    text = config(cgroupDriver="systemd", featureGates={"NodeSwap": True}, evictionHard={})
    assert parse_kubelet_config(text, source="c").settings() == {}


def test_an_empty_reservation_policy_is_the_kubelets_default() -> None:
    assert parse_kubelet_config(config(memoryReservationPolicy=""), source="c").settings() == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n",
            "apiVersion: 'kubelet.config.k8s.io/v1' is not supported",
            id="unknown-api-version",
        ),
        pytest.param(
            "kind: KubeletConfiguration\n", "apiVersion: None is not supported", id="no-api-version"
        ),
        pytest.param(
            "apiVersion: v1\nkind: Pod\n", "kind: 'Pod' (apiVersion 'v1') is not a", id="pod"
        ),
        pytest.param(
            "apiVersion: v1\nkind: ConfigMap\ndata: {other: x}\n", "data.kubelet: missing", id="cm"
        ),
        pytest.param("", "no KubeletConfiguration", id="empty"),
        pytest.param("[1, 2]", "not a Kubernetes object", id="list"),
        pytest.param("a: [", "not YAML", id="not-yaml"),
        pytest.param(config() + "---\n" + config(), "more than one KubeletConfiguration", id="two"),
        pytest.param(
            config(featureGates={"MemoryQoS": "yes please"}),
            "featureGates.MemoryQoS: must be true or false",
            id="gate-not-bool",
        ),
        pytest.param(
            config(featureGates=["MemoryQoS"]), "featureGates: must be a map", id="gates-list"
        ),
        pytest.param(
            config(memoryThrottlingFactor=1.5), "memoryThrottlingFactor: must be", id="factor-big"
        ),
        pytest.param(
            config(memoryThrottlingFactor=0), "memoryThrottlingFactor: must be", id="factor-zero"
        ),
        pytest.param(
            config(memoryThrottlingFactor="0.9"), "memoryThrottlingFactor: must be", id="factor-str"
        ),
        pytest.param(
            config(memoryThrottlingFactor=True), "memoryThrottlingFactor: must be", id="factor-bool"
        ),
        pytest.param(
            config(memoryReservationPolicy="Tiered"),
            "memoryReservationPolicy: must be None or TieredReservation",
            id="bad-policy",
        ),
    ],
)
def test_bad_input_names_the_field(text: str, message: str) -> None:
    with pytest.raises(KubeletConfigError, match=f"^file.*{re.escape(message)}"):
        parse_kubelet_config(text, source="file")


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        pytest.param("MemoryQoS=true", {"MemoryQoS": True}, id="one"),
        pytest.param(
            "MemoryQoS=false, NodeSwap=T", {"MemoryQoS": False, "NodeSwap": True}, id="spaces"
        ),
        pytest.param("MemoryQoS=1,", {"MemoryQoS": True}, id="trailing-comma"),
        pytest.param("", {}, id="empty"),
    ],
)
def test_feature_gates_flag(flag: str, expected: dict[str, bool]) -> None:
    assert parse_feature_gates(flag) == expected


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        pytest.param("MemoryQoS", "missing bool value for 'MemoryQoS'", id="no-value"),
        pytest.param("MemoryQoS=yes", "MemoryQoS: must be true or false", id="not-go-bool"),
        pytest.param("=true", "missing bool value", id="no-name"),
    ],
)
def test_feature_gates_flag_rejects(flag: str, message: str) -> None:
    with pytest.raises(KubeletConfigError, match=f"--feature-gates: .*{re.escape(message)}"):
        parse_feature_gates(flag)


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        pytest.param(
            KubeletProfile.defaults_for(37, memory_qos=False, throttling_factor=0.8),
            "memoryThrottlingFactor: must not be set",
            id="1.37.2 validation.go:375 factor with the gate off",
        ),
        pytest.param(
            KubeletProfile.defaults_for(37, memory_qos=False, throttling_factor=0.9),
            None,
            id="1.37.2 validation.go:375 the old default 0.9 is still accepted",
        ),
        pytest.param(
            KubeletProfile.defaults_for(36, reservation_policy="TieredReservation"),
            "memoryReservationPolicy: TieredReservation requires the MemoryQoS feature gate",
            id="1.36.0 validation.go:355 TieredReservation with the gate off",
        ),
        pytest.param(
            KubeletProfile.defaults_for(36, throttling_factor=0.5),
            None,
            id="1.36.0 a factor with the gate off is accepted",
        ),
        pytest.param(KubeletProfile.defaults_for(37), None, id="1.37 defaults"),
    ],
)
def test_kubelet_rejects_what_the_kubelet_refuses(
    profile: KubeletProfile, message: str | None
) -> None:
    got = kubelet_rejects(profile)
    assert got == message if message is None else got is not None and got.startswith(message)
