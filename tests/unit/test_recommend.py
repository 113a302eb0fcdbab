"""The recommendation math: owners, the leak test, the KRR and VPA anchors, the proposal."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memwarden.api import MemoryPolicy
from memwarden.history import history_queries, pod_labels_from_metric, sanitised
from memwarden.quantity import parse_bytes
from memwarden.recommend import (
    DAY,
    HOUR,
    ContainerHistory,
    Incident,
    Options,
    Owner,
    Selector,
    as_document,
    ceil_mib,
    ceiling_for,
    common_labels,
    daily_peaks,
    find_leak,
    krr_simple,
    last_incidents,
    owner_from_metric,
    owner_from_pod_name,
    policy_document,
    recommend,
    vpa_bucket_end,
    vpa_target,
)
from memwarden.sizing import HEADROOM_MIN, KubeletProfile

pytestmark = pytest.mark.unit

MIB = 2**20
END = 1_800_000_000.0
WEEK = 7 * DAY


def hourly(values: list[float], *, end: float = END) -> tuple[tuple[float, float], ...]:
    """Hourly peaks ending at ``end``, oldest first."""
    n = len(values)
    return tuple((end - (n - 1 - i) * HOUR, v) for i, v in enumerate(values))


def history(
    pod: str = "web-7d9f8b6c5d-x2x4z",
    *,
    container: str = "app",
    peak: float = 500 * MIB,
    p95: float = 400 * MIB,
    points: tuple[tuple[float, float], ...] | None = None,
    samples: int = 20160,
    oom: int = 0,
) -> ContainerHistory:
    return ContainerHistory(
        pod=pod,
        container=container,
        peak=peak,
        quantiles={0.95: p95},
        samples=samples,
        hourly_peaks=hourly([peak] * 168) if points is None else points,
        oom_kills=oom,
        restarts=0,
    )


OPTIONS = Options(namespace="shop", window=WEEK)


@pytest.mark.parametrize(
    ("pod", "kind", "name"),
    [
        pytest.param("web-7d9f8b6c5d-x2x4z", "Deployment", "web", id="deployment"),
        pytest.param("my-api-55d4b6c8f9-bxq2w", "Deployment", "my-api", id="dashed-deployment"),
        pytest.param("db-0", "StatefulSet", "db", id="statefulset-0"),
        pytest.param("kafka-broker-12", "StatefulSet", "kafka-broker", id="statefulset-12"),
        pytest.param("node-agent-x2x4z", "DaemonSet", "node-agent", id="daemonset"),
        pytest.param("standalone", "Pod", "standalone", id="bare-pod"),
        pytest.param("web-aeiou", "Pod", "web-aeiou", id="vowels-are-not-generated"),
    ],
)
def test_owner_from_pod_name(pod: str, kind: str, name: str) -> None:
    owner = owner_from_pod_name(pod)
    assert (owner.kind, owner.name) == (kind, name)


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        pytest.param("ReplicaSet", "web-7d9f8b6c5d", ("Deployment", "web"), id="rs-of-deployment"),
        pytest.param("ReplicaSet", "handmade", ("ReplicaSet", "handmade"), id="bare-rs"),
        pytest.param("StatefulSet", "db", ("StatefulSet", "db"), id="statefulset"),
        pytest.param("Node", "n1", ("Pod", "p"), id="static-pod"),
    ],
)
def test_owner_from_metric(kind: str, name: str, expected: tuple[str, str]) -> None:
    owner = owner_from_metric(kind=kind, name=name, pod="p")
    assert (owner.kind, owner.name) == expected
    assert owner.source == "kube_pod_owner"


def test_krr_simple_is_the_highest_peak_plus_15_percent() -> None:
    assert krr_simple([100 * MIB, 200 * MIB]) == math.ceil(200 * MIB * 1.15)


def test_vpa_bucket_end_matches_the_histogram_formula() -> None:
    # util/histogram_options.go: start(b) = 1e7 * (1.05^b - 1) / 0.05; 1e7 is bucket 1's start.
    assert vpa_bucket_end(0) == pytest.approx(1e7)
    assert vpa_bucket_end(1e7) == pytest.approx(1e7 * (1.05**2 - 1) / 0.05)
    value = 700 * MIB
    end = vpa_bucket_end(value)
    assert value < end <= value * 1.05 + 1e7


def test_vpa_target_is_bucket_end_plus_margin_with_a_floor() -> None:
    daily = [(END - i * DAY, 500.0 * MIB) for i in range(7)]
    assert vpa_target([daily]) == math.ceil(vpa_bucket_end(500 * MIB) * 1.15)
    small = [(END, 10.0 * MIB)]
    assert vpa_target([small]) == 250 * MIB
    assert vpa_target([small], containers_in_pod=2) == 125 * MIB


def test_vpa_target_weighs_recent_days_more() -> None:
    # One old day at 2 GiB, six recent at 400 MiB: the newest weights dominate, so the 90th
    # percentile is 400 MiB's bucket although 1/7 of the days (14 %) is higher.
    days = [(END - i * DAY, 400.0 * MIB) for i in range(6)] + [(END - 6 * DAY, 2048.0 * MIB)]
    assert vpa_target([days]) == math.ceil(vpa_bucket_end(400 * MIB) * 1.15)
    # The same high day as the newest: it carries nearly half the weight.
    days = [(END - i * DAY, 400.0 * MIB) for i in range(1, 7)] + [(END, 2048.0 * MIB)]
    assert vpa_target([days]) == math.ceil(vpa_bucket_end(2048 * MIB) * 1.15)


def test_daily_peaks_count_back_from_the_end() -> None:
    points = hourly([float(i) for i in range(48)])
    assert daily_peaks(points, end=END) == [(END - DAY, 23.0), (END, 47.0)]


@given(
    st.lists(st.floats(min_value=1e6, max_value=1e11), min_size=1, max_size=50),
    st.integers(min_value=1, max_value=5),
)
def test_vpa_target_covers_most_of_the_peaks(peaks: list[float], containers: int) -> None:
    """Property: the smallest peak plus margin <= target <= the largest peak's bucket end
    plus margin, and never under the per-container floor."""
    daily = [(END - i * DAY, v) for i, v in enumerate(peaks)]
    target = vpa_target([daily], containers_in_pod=containers)
    assert target >= 250 * MIB / containers
    assert target >= min(peaks) * 1.15 - 1
    assert target <= max(vpa_bucket_end(max(peaks)) * 1.15, 250 * MIB / containers) + 1


@pytest.mark.parametrize(
    ("values", "leaks"),
    [
        pytest.param([200 * MIB + i * 3 * MIB for i in range(168)], True, id="steady-growth"),
        pytest.param([500 * MIB] * 168, False, id="flat"),
        pytest.param(
            [400 * MIB + 100 * MIB * math.sin(2 * math.pi * i / 24) for i in range(168)],
            False,
            id="daily-cycle",
        ),
        pytest.param(
            [200 * MIB + (i % 40) * 10 * MIB for i in range(165)] + [200 * MIB] * 3,
            True,
            id="sawtooth-of-oom-kills",
        ),
        pytest.param(
            [900 * MIB] * 100 + [200 * MIB + i * 5 * MIB for i in range(68)],
            True,
            id="growing-since-restart",
        ),
        pytest.param(
            [200 * MIB + i * 3 * MIB for i in range(100)] + [200 * MIB] * 68,
            False,
            id="fixed-then-flat",
        ),
        pytest.param(
            [200 * MIB + i * 0.05 * MIB for i in range(168)], False, id="growth-under-10pc"
        ),
        pytest.param([200 * MIB + i * 3 * MIB for i in range(8)], False, id="too-few-hours"),
    ],
)
def test_find_leak(values: list[float], leaks: bool) -> None:
    found = find_leak(history(points=hourly(values)))
    assert (found is not None) == leaks


def test_leak_rate_is_per_hour() -> None:
    found = find_leak(history(points=hourly([200 * MIB + i * 3 * MIB for i in range(168)])))
    assert found is not None
    assert found.bytes_per_hour == pytest.approx(3 * MIB)
    assert found.hours == 168


@given(
    base=st.floats(min_value=50 * MIB, max_value=8 * 2**30),
    amplitude=st.floats(min_value=0, max_value=0.5),
    phase=st.floats(min_value=0, max_value=2 * math.pi),
)
def test_a_daily_cycle_is_never_a_leak(base: float, amplitude: float, phase: float) -> None:
    values = [base * (1 + amplitude * math.sin(phase + 2 * math.pi * i / 24)) for i in range(168)]
    assert find_leak(history(points=hourly(values))) is None


@given(peak=st.integers(min_value=MIB, max_value=64 * 2**30), go=st.booleans())
def test_ceiling_leaves_room_above_the_peak_and_below_it_for_gomemlimit(
    peak: int, go: bool
) -> None:
    ceiling, percent = ceiling_for(peak, go=go)
    assert ceiling % MIB == 0
    assert ceiling >= peak * 1.2
    assert ceiling >= peak + 32 * MIB
    if go:
        assert percent is not None
        gomemlimit = ceiling * percent / 100
        assert ceiling - gomemlimit >= HEADROOM_MIN  # the sizing rule's headroom
        assert gomemlimit >= peak * 1.08  # the heap limit is above the highest working set
    else:
        assert percent is None


def test_recommend_plain_resources_under_the_default_kubelet() -> None:
    (workload,) = recommend(
        [
            history(peak=700 * MIB, p95=399 * MIB),
            history("web-7d9f8b6c5d-bbbbb", peak=300 * MIB, p95=200 * MIB),
        ],
        options=OPTIONS,
        end=END,
    )
    assert workload.owner == Owner(kind="Deployment", name="web", source="pod name")
    (c,) = workload.containers
    assert c.request == 399 * MIB
    assert c.limit == 840 * MIB  # 700 MiB x 1.2
    assert c.memory == {"request": "399Mi", "limit": "840Mi"}
    assert c.gomemlimit == "756MiB"  # 90 % of the limit
    assert c.memory_high is None
    assert c.krr == math.ceil(700 * MIB * 1.15)
    assert c.basis.confidence == "high"
    assert c.basis.pods == 2


def test_recommend_intent_when_the_kubelet_throttles() -> None:
    profile = KubeletProfile(throttling_factor=0.9, reservation_policy="TieredReservation")
    options = Options(namespace="shop", window=WEEK, profile=profile)
    (workload,) = recommend([history(peak=700 * MIB, p95=399 * MIB)], options=options, end=END)
    (c,) = workload.containers
    assert c.memory == {"protect": "399Mi", "high": "840Mi"}
    assert c.memory_high == 840 * MIB
    assert c.gomemlimit == "756MiB"  # 90 % of memory.high
    assert c.limit is not None and c.limit > 840 * MIB
    # Without reservation the kubelet writes no memory.low: high + max instead.
    options = Options(namespace="shop", window=WEEK, profile=KubeletProfile(throttling_factor=0.9))
    (workload,) = recommend([history(peak=700 * MIB, p95=399 * MIB)], options=options, end=END)
    assert set(workload.containers[0].memory) == {"high", "max"}
    assert workload.containers[0].memory_high == 840 * MIB


def test_oom_kills_bump_the_peak_first() -> None:
    (workload,) = recommend([history(peak=512 * MIB, oom=2)], options=OPTIONS, end=END)
    (c,) = workload.containers
    bumped = max(512 * MIB * 1.2, 512 * MIB + 100 * 1024 * 1024)
    assert c.limit == ceil_mib(bumped * 1.2)
    assert any(n.startswith("oom:") for n in c.notes)


def test_a_leaking_workload_gets_no_policy_and_a_pointer_to_its_incident() -> None:
    leak = history(points=hourly([200 * MIB + i * 3 * MIB for i in range(168)]), peak=704 * MIB)
    incidents = {
        leak.pod: Incident(
            name="web-x-1", pod=leak.pod, created="2026-11-30T10:00:00Z", summary="top in-use f"
        )
    }
    (workload,) = recommend([leak], options=OPTIONS, end=END, incidents=incidents)
    assert workload.leaking
    assert workload.containers[0].limit is None
    assert policy_document(workload, namespace="shop") is None
    assert any("web-x-1" in n and "top in-use f" in n for n in workload.containers[0].notes)
    (unreachable,) = recommend([leak], options=OPTIONS, end=END, incidents=None)
    assert any("kubectl get memoryincidents -n shop" in n for n in unreachable.containers[0].notes)


def test_low_confidence_on_a_short_history() -> None:
    short = history(points=hourly([500 * MIB] * 20), samples=2400)
    (workload,) = recommend([short], options=OPTIONS, end=END)
    assert workload.containers[0].basis.confidence == "low"
    assert workload.containers[0].basis.coverage == pytest.approx(20 / 168)


def test_policy_document_is_a_valid_memory_policy() -> None:
    (workload,) = recommend(
        [history(), history(container="sidecar", peak=50 * MIB, p95=40 * MIB)],
        options=OPTIONS,
        end=END,
        pod_labels={"web-7d9f8b6c5d-x2x4z": {"app": "web", "pod_template_hash": "7d9f8b6c5d"}},
    )
    doc = policy_document(workload, namespace="shop")
    assert doc is not None
    policy = MemoryPolicy.model_validate(doc)
    assert policy.spec.selector.matchLabels == {"app": "web"}
    assert policy.spec.containers == ["app"]  # the largest peak
    assert parse_bytes(doc["spec"]["memory"]["limit"]) == 600 * MIB
    assert any("sidecar keep" in n for n in workload.notes)
    assert as_document(workload, namespace="shop")["policy"] == doc


def test_selector_filters_on_kube_pod_labels() -> None:
    histories = [history("a-7d9f8b6c5d-bbbbb"), history("b-7d9f8b6c5d-bbbbb")]
    labels = {"a-7d9f8b6c5d-bbbbb": {"app": "a"}, "b-7d9f8b6c5d-bbbbb": {"app": "b"}}
    chosen = recommend(
        histories, options=OPTIONS, end=END, pod_labels=labels, selector=Selector.parse("app=b")
    )
    assert [w.owner.name for w in chosen] == ["b"]
    with pytest.raises(ValueError, match="--selector: Prometheus has no kube_pod_labels"):
        recommend(histories, options=OPTIONS, end=END, selector=Selector.parse("app=b"))


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        pytest.param("app=web", {"app": "web"}, True, id="equals"),
        pytest.param("app==web", {"app": "api"}, False, id="double-equals"),
        pytest.param("tier!=cache", {"tier": "cache"}, False, id="differs"),
        pytest.param("canary", {"canary": ""}, True, id="exists"),
        pytest.param("!legacy", {"legacy": "1"}, False, id="absent"),
        pytest.param("app=web, canary", {"app": "web"}, False, id="conjunction"),
    ],
)
def test_selector(text: str, labels: dict[str, str], matches: bool) -> None:
    assert Selector.parse(text).matches(labels) is matches


def test_set_based_selectors_are_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--selector: 'app in"):
        Selector.parse("app in (a,b)")


def test_common_labels_drop_ambiguous_and_per_pod_keys() -> None:
    pods = [
        {"app": "web", "pod_template_hash": "abc", "app_kubernetes_io_name": "web"},
        {"app": "web", "pod_template_hash": "def", "app_kubernetes_io_name": "web"},
    ]
    assert common_labels(pods) == {"app": "web"}


def test_kube_state_metrics_labels() -> None:
    labels = {"namespace": "shop", "pod": "p", "label_app": "web", "label_a_b": "x"}
    assert pod_labels_from_metric(labels) == {"app": "web", "a_b": "x"}
    assert sanitised("app.kubernetes.io/name") == "app_kubernetes_io_name"


def test_last_incidents_keeps_the_newest_per_pod() -> None:
    objects = [
        {
            "metadata": {"name": "i1", "creationTimestamp": "2026-11-29T00:00:00Z"},
            "spec": {"pod": "p"},
        },
        {
            "metadata": {"name": "i2", "creationTimestamp": "2026-11-30T00:00:00Z"},
            "spec": {"pod": "p"},
            "status": {"analysis": {"top": [{"function": "main.leak", "flatBytes": 3 * MIB}]}},
        },
    ]
    (incident,) = last_incidents(objects).values()
    assert incident.name == "i2"
    assert incident.summary == "top in-use main.leak (3.00Mi)"


def test_four_queries_per_namespace_whatever_the_workloads() -> None:
    queries = history_queries("shop", window=WEEK)
    assert sorted(queries) == ["events", "hourly", "meta", "stats"]
    assert all('namespace="shop"' in q for q in queries.values())
    assert "[168h]" in queries["stats"]
    assert "quantile_over_time(0.95" in queries["stats"]


@pytest.mark.parametrize("command", ["explain", "recommend"])
def test_every_sizing_command_reads_the_kubelet_profile_the_same_way(command: str) -> None:
    """recommend sizes with explain's profile loader: it must take every flag that reads."""
    from memwarden.cli import build_parser
    from memwarden.commands.explain import load_profile

    required = {
        "explain": ["--policy", "p.yaml", "--pod", "pod.yaml"],
        "recommend": ["--prometheus", "http://127.0.0.1:9", "-n", "shop"],
    }[command]
    args = build_parser(only=command).parse_args(
        [command, *required, "--feature-gates", "MemoryQoS=false", "--kubernetes-minor", "36"]
    )
    profile = load_profile(args).profile()
    assert (profile.kubernetes_minor, profile.memory_qos) == (36, False)
