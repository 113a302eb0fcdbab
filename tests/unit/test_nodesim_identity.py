"""nodesim.identity and nodesim.procs.wrap_argv: who a simulated container runs as.

The node simulator (hack/nodesim, test infrastructure) gives each container the uid, gid
and capabilities a runtime (containerd + runc) would, so that ptrace and /proc reads are
decided by the kernel in tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nodesim.identity import DEFAULT_CAPABILITIES, Identity, effective_identity, setpriv_argv
from nodesim.procs import NEW_PID_NAMESPACE, Launch, wrap_argv

pytestmark = pytest.mark.unit

NONROOT_IMAGE = (65532, 65532)

IDENTITIES = [
    pytest.param({}, {}, (0, 0), 0, 0, DEFAULT_CAPABILITIES, id="image-default-root"),
    pytest.param({}, {}, NONROOT_IMAGE, 65532, 65532, DEFAULT_CAPABILITIES, id="image-user"),
    pytest.param(
        {"runAsUser": 1000, "runAsGroup": 2000},
        {},
        NONROOT_IMAGE,
        1000,
        2000,
        DEFAULT_CAPABILITIES,
        id="pod-security-context",
    ),
    pytest.param(
        {"runAsUser": 1000, "runAsGroup": 2000},
        {"runAsUser": 7, "runAsGroup": 8},
        NONROOT_IMAGE,
        7,
        8,
        DEFAULT_CAPABILITIES,
        id="container-wins-over-pod",
    ),
    pytest.param(
        {}, {"runAsUser": 0}, NONROOT_IMAGE, 0, 0, DEFAULT_CAPABILITIES, id="uid-without-gid"
    ),
    pytest.param(
        {"runAsGroup": 5}, {}, NONROOT_IMAGE, 65532, 5, DEFAULT_CAPABILITIES, id="pod-gid-only"
    ),
    pytest.param(
        {},
        {"capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]}},
        (0, 0),
        0,
        0,
        frozenset({"SYS_PTRACE"}),
        id="drop-all-add-one",
    ),
    pytest.param(
        {},
        {"capabilities": {"drop": ["NET_RAW", "CAP_KILL"], "add": ["cap_sys_ptrace"]}},
        (0, 0),
        0,
        0,
        (DEFAULT_CAPABILITIES - {"NET_RAW", "KILL"}) | {"SYS_PTRACE"},
        id="spelled-with-cap-prefix",
    ),
    pytest.param({}, {"privileged": True}, (0, 0), 0, 0, None, id="privileged-all"),
    pytest.param({}, {"capabilities": {"add": ["ALL"]}}, (0, 0), 0, 0, None, id="add-all"),
]


@pytest.mark.parametrize(("pod", "own", "image", "uid", "gid", "bounding"), IDENTITIES)
def test_effective_identity(
    pod: dict[str, Any],
    own: dict[str, Any],
    image: tuple[int, int],
    uid: int,
    gid: int,
    bounding: frozenset[str] | None,
) -> None:
    identity = effective_identity(
        pod_spec={"securityContext": pod},
        container={"name": "app", "securityContext": own},
        image_user=image,
    )

    assert (identity.uid, identity.gid) == (uid, gid)
    assert identity.capabilities == bounding
    assert identity.effective == (bounding if uid == 0 else frozenset())


def test_a_non_root_container_gets_no_effective_capability_even_when_added() -> None:
    identity = effective_identity(
        pod_spec={},
        container={
            "securityContext": {"runAsUser": 65532, "capabilities": {"add": ["SYS_PTRACE"]}}
        },
        image_user=(0, 0),
    )

    assert "SYS_PTRACE" in (identity.capabilities or ())
    assert identity.effective == frozenset()


def test_allow_privilege_escalation_false_sets_no_new_privs() -> None:
    identity = effective_identity(
        pod_spec={},
        container={"securityContext": {"allowPrivilegeEscalation": False}},
        image_user=(0, 0),
    )

    assert identity.no_new_privs
    assert "--no-new-privs" in setpriv_argv("setpriv", identity)


def test_setpriv_argv_bounds_the_capabilities_and_clears_the_rest() -> None:
    identity = Identity(uid=65532, gid=65532, capabilities=frozenset({"SYS_PTRACE", "CHOWN"}))

    assert setpriv_argv("/usr/bin/setpriv", identity) == [
        "/usr/bin/setpriv",
        "--reuid=65532",
        "--regid=65532",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all,+chown,+sys_ptrace",
        "--",
    ]
    everything = Identity(uid=0, gid=0, capabilities=None)
    assert "--bounding-set=+all" in setpriv_argv("setpriv", everything)


def _launch(namespace: str | int | None) -> Launch:
    return Launch(
        argv=("/bin/prog", "-x"),
        env={},
        cwd=Path("/run/c"),
        log_path=Path("/log"),
        identity=Identity(uid=1, gid=2, capabilities=frozenset()),
        pid_namespace=namespace,
        reach=("/root/prog",),
    )


TOOLS = {"setpriv": "SP", "unshare": "US", "nsenter": "NS", "python": "PY", "shim": "SHIM"}
INNER = ["PY", "-I", "-S", "SHIM", "--user", "1:2", "--reach", "/root/prog", "--", "SP"]

WRAPS = [
    pytest.param(
        NEW_PID_NAMESPACE,
        ["US", "--pid", "--fork", "--mount-proc", "--kill-child", "--"],
        id="own-pid-namespace",
    ),
    pytest.param(
        4242, ["NS", "--target=4242", "--pid", "--", "US", "--mount-proc", "--"], id="join-target"
    ),
    pytest.param(None, ["US", "--mount", "--"], id="host-pid"),
]


@pytest.mark.parametrize(("namespace", "prefix"), WRAPS)
def test_wrap_argv(namespace: str | int | None, prefix: list[str]) -> None:
    argv = wrap_argv(_launch(namespace), **TOOLS)

    assert argv[: len(prefix)] == prefix
    assert argv[len(prefix) : len(prefix) + len(INNER)] == INNER
    assert "--reuid=1" in argv
    assert argv[-3:] == ["--", "/bin/prog", "-x"]


def test_without_an_identity_the_program_runs_as_it_is() -> None:
    launch = Launch(argv=("/bin/prog",), env={}, cwd=Path("/"), log_path=Path("/log"))

    assert wrap_argv(launch, **TOOLS) == ["/bin/prog"]
