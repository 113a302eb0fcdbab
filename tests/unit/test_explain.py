"""`memwarden explain`: offline answers from files, with exit codes a CI pipeline can use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from memwarden.cli import main
from memwarden_testing.builders import make_policy, make_policy_spec
from memwarden_testing.cluster import REPO

pytestmark = pytest.mark.unit

EXAMPLES = REPO / "examples" / "policies"
DEPLOYMENT = EXAMPLES / "checkout-deployment.yaml"


def explain_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["explain", *args, "-o", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_plain_policy_on_a_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = explain_json(
        capsys, "--policy", str(EXAMPLES / "checkout.yaml"), "--pod", str(DEPLOYMENT)
    )
    assert code == 0
    assert doc["policy"] == "shop/checkout"
    (app,) = doc["containers"]
    assert (app["request"], app["limit"]) == ("512Mi", "1Gi")
    assert app["env"] == {"GOMEMLIMIT": "921MiB", "GOGC": "100"}
    # Stock 1.37 kubelet: no memory.high, no protection; only memory.max.
    assert app["cgroup"] == {
        "memory.min": None,
        "memory.low": None,
        "memory.high": None,
        "memory.max": "1Gi",
    }


def test_intent_with_a_throttling_kubelet_predicts_the_cgroup_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, doc = explain_json(
        capsys,
        "--policy",
        str(EXAMPLES / "checkout-intent.yaml"),
        "--pod",
        str(DEPLOYMENT),
        "--throttling-factor",
        "0.9",
        "--reservation-policy",
        "TieredReservation",
    )
    assert code == 0
    (app,) = doc["containers"]
    assert (app["request"], app["limit"]) == ("1Gi", "2Gi")
    # floor((1Gi + 0.9 * (2Gi - 1Gi)) / 4096) * 4096 = 2040107008 bytes
    assert app["cgroup"]["memory.high"] == "1992292Ki"
    assert app["cgroup"]["memory.low"] == "1Gi"
    assert doc["podCgroup"]["memory.low"] == "1Gi"


def test_intent_on_a_stock_kubelet_is_infeasible_with_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, doc = explain_json(
        capsys, "--policy", str(EXAMPLES / "checkout-intent.yaml"), "--pod", str(DEPLOYMENT)
    )
    assert code == 1
    assert "memoryReservationPolicy" in doc["infeasible"]


def test_winner_among_several_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = explain_json(
        capsys,
        "--policy",
        str(EXAMPLES / "checkout.yaml"),
        "--policy",
        str(EXAMPLES / "checkout-intent.yaml"),
        "--pod",
        str(DEPLOYMENT),
        "--throttling-factor",
        "0.9",
        "--reservation-policy",
        "TieredReservation",
    )
    assert code == 0
    assert doc["policy"] == "shop/checkout-intent"
    assert doc["otherMatchingPolicies"] == ["shop/checkout"]


def test_table_output_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["explain", "--policy", str(EXAMPLES / "checkout.yaml"), "--pod", str(DEPLOYMENT)])
        == 0
    )
    out = capsys.readouterr().out
    assert "policy:  shop/checkout" in out
    assert "921MiB" in out


def test_table_gives_awkward_exact_values_an_approximation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--policy", str(EXAMPLES / "checkout-intent.yaml"), "--pod", str(DEPLOYMENT)]
    tiered = ["--throttling-factor", "0.9", "--reservation-policy", "TieredReservation"]
    assert main(["explain", *args, *tiered]) == 0
    out = capsys.readouterr().out
    # memory.high as `cat memory.high` shows it, then readable; the JSON keeps 1992292Ki
    assert "2040107008 (~1.90Gi)" in out
    assert "(~1Gi)" not in out and "(~2Gi)" not in out  # whole units stand alone


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        pytest.param(
            make_policy(spec=make_policy_spec(memory={"request": "2Gi", "limit": "1Gi"})),
            "memory.request",
            id="request-above-limit",
        ),
        pytest.param(
            make_policy(spec=make_policy_spec(memory={"request": "lots"})),
            "spec.memory.request",
            id="bad-quantity",
        ),
        pytest.param({"kind": "ConfigMap"}, "no MemoryPolicy", id="no-policy"),
    ],
)
def test_bad_input_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: dict, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    assert main(["explain", "--policy", str(path), "--pod", str(DEPLOYMENT)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_unreadable_pod_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "explain",
                "--policy",
                str(EXAMPLES / "checkout.yaml"),
                "--pod",
                str(tmp_path / "missing.yaml"),
            ]
        )
        == 2
    )
    assert "missing.yaml" in capsys.readouterr().err


def test_runtime_example_shows_injected_flags_and_notes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A pod with its own -Xmx keeps it; explain says what it injects and why."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"app": "orders"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "x",
                    "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx3g -Dx=1"}],
                }
            ]
        },
    }
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    policy = str(EXAMPLES / "runtimes-jvm-node.yaml")
    code, doc = explain_json(
        capsys,
        "--policy",
        policy,
        "--pod",
        str(tmp_path / "pod.yaml"),
        "--throttling-factor",
        "0.9",
    )
    assert code == 0
    (app,) = doc["containers"]
    assert app["options"] == {
        "JAVA_TOOL_OPTIONS": "-XX:MaxRAMPercentage=66.4999 -XX:MaxMetaspaceSize=192m "
        "-XX:MaxDirectMemorySize=128m"
    }
    assert "app: keeps its own -Xmx3g in JAVA_TOOL_OPTIONS; set runtime.jvm.overrideExisting" in (
        " ".join(doc["notes"])
    )
    assert any("the JVM reads memory.max 2Gi, not memory.high" in n for n in doc["notes"])
    assert "app: its own -Xmx3g is above memory.max 2Gi: the OOM killer would act" in (
        " ".join(doc["notes"])
    )
    code = main(["explain", "--policy", policy, "--pod", str(tmp_path / "pod.yaml")])
    table = capsys.readouterr().out
    assert "inject:  app: JAVA_TOOL_OPTIONS += -XX:MaxRAMPercentage=70 " in table


KUBELET = REPO / "examples" / "kubelet"
INTENT = ["--policy", str(EXAMPLES / "checkout-intent.yaml"), "--pod", str(DEPLOYMENT)]


def test_kubelet_config_file_sets_the_memory_qos_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, doc = explain_json(capsys, *INTENT, "--kubelet-config", str(KUBELET / "config.yaml"))
    assert code == 0
    assert doc["profile"] == {
        "kubernetesMinor": 37,
        "memoryQoS": True,
        "memoryThrottlingFactor": 0.9,
        "memoryReservationPolicy": "TieredReservation",
        "pageSize": 4096,
        "nodeAllocatable": None,
    }
    (app,) = doc["containers"]
    assert app["cgroup"]["memory.high"] == "1992292Ki"
    assert app["cgroup"]["memory.low"] == "1Gi"


def test_kubeadm_configmap_as_kubelet_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = explain_json(
        capsys,
        "--policy",
        str(EXAMPLES / "checkout.yaml"),
        "--pod",
        str(DEPLOYMENT),
        "--kubelet-config",
        str(KUBELET / "kubeadm-kubelet-config.yaml"),
    )
    assert code == 0
    assert doc["profile"]["memoryThrottlingFactor"] == 0.8
    (app,) = doc["containers"]
    # 512Mi + 0.8 × 512Mi = 966367641.6 -> 966365184 (whole pages)
    assert app["cgroup"]["memory.high"] == "943716Ki"


def test_feature_gates_flag_wins_over_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "featureGates: {MemoryQoS: false}\nmemoryThrottlingFactor: 0.9\n"
    )
    args = [*INTENT, "--kubernetes-minor", "36", "--kubelet-config", str(path)]
    # The 1.36 kubelet refuses TieredReservation with the gate off.
    assert main(["explain", *args, "--reservation-policy", "TieredReservation"]) == 2
    assert "requires the MemoryQoS feature gate" in capsys.readouterr().err
    code, doc = explain_json(
        capsys,
        *args,
        "--reservation-policy",
        "TieredReservation",
        "--feature-gates",
        "MemoryQoS=true,NodeSwap=false",
    )
    assert code == 0
    assert doc["profile"]["memoryQoS"] is True
    (app,) = doc["containers"]
    assert app["cgroup"]["memory.high"] == "1992292Ki"


@pytest.mark.parametrize("spelling", ["camelCase", "snake_case"])
def test_profile_file_takes_the_charts_spelling_and_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    values = {
        "kubernetesMinor": 37,
        "memoryThrottlingFactor": 0.9,
        "memoryReservationPolicy": "TieredReservation",
    }
    if spelling == "snake_case":
        values = {
            "kubernetes_minor": 37,
            "throttling_factor": 0.9,
            "reservation_policy": "TieredReservation",
        }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(values))
    code, doc = explain_json(capsys, *INTENT, "--profile", str(path))
    assert code == 0
    assert doc["profile"]["memoryThrottlingFactor"] == 0.9


def test_chart_values_file_as_profile(capsys: pytest.CaptureFixture[str]) -> None:
    values = REPO / "e2e" / "kind" / "values.yaml"
    code, doc = explain_json(capsys, *INTENT, "--profile", str(values))
    assert code == 0
    assert doc["profile"]["memoryReservationPolicy"] == "TieredReservation"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--feature-gates", "MemoryQoS"], "missing bool value", id="gate-no-value"),
        pytest.param(
            ["--kubelet-config", str(EXAMPLES / "checkout.yaml")],
            "kind: 'MemoryPolicy'",
            id="not-a-kubelet-config",
        ),
        pytest.param(
            ["--feature-gates", "MemoryQoS=false", "--throttling-factor", "0.5"],
            "memoryThrottlingFactor: must not be set",
            id="kubelet-would-refuse",
        ),
        pytest.param(["--throttling-factor", "high"], "--throttling-factor", id="factor-word"),
        pytest.param(["--kubelet-config", "/nonexistent.yaml"], "nonexistent", id="missing"),
    ],
)
def test_bad_kubelet_input_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["explain", *INTENT, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_pod_level_resources_move_memory_high_to_the_pod_cgroup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "checkout-1", "namespace": "shop", "labels": {"app": "checkout"}},
        "spec": {
            "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "4Gi"}},
            "containers": [{"name": "app", "image": "checkout:1"}],
        },
    }
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            make_policy(
                name="checkout",
                namespace="shop",
                spec=make_policy_spec(memory={"protect": "1Gi"}),
            )
        )
    )
    code, doc = explain_json(
        capsys,
        "--policy",
        str(policy),
        "--pod",
        str(path),
        "--kubelet-config",
        str(KUBELET / "config.yaml"),
    )
    assert code == 0, doc
    # floor((2Gi + 0.9 × 2Gi) / 4096) × 4096, from the pod's own request and limit
    assert doc["podCgroup"]["memory.high"] == "3984588Ki"
    (app,) = doc["containers"]
    assert app["cgroup"]["memory.high"] is None
    assert any("pod cgroup's memory.high" in note for note in doc["notes"])
