"""rbac.py against the code: every API call has a rule, every rule serves a call.

The scan reads operator/memwarden's source (ast) for:
- kopf handlers and the resources they name (watching: list/watch; changing handlers,
  timers and daemons: also patch, kopf's annotations; ``patch.status``: the status
  subresource; any per-object handler: events create, kopf's posting);
- kubernetes client methods, referenced or called (``patch_namespaced_pod_ephemeralcontainers``),
  resolved to (group, resource, verb) from the client's own request path and method;
- calls of ``kube.Kube``'s custom-object wrappers with a ``CustomResource`` constant.

Modules that run with a person's kubeconfig, not the operator's ServiceAccount (the
``memwarden incidents`` command), are not the operator's and are left out.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from memwarden import rbac
from memwarden.kube import CustomResource

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "memwarden"
Permission = tuple[str, str, str]  # (apiGroup, resource, verb)

#: kopf decorators that start a watch, and those whose handlers kopf also patches
#: (progress and diff-base annotations, finalizers; and a finalizer no handler needs, off).
WATCHING = {"index", "event"}
CHANGING = {"create", "update", "delete", "resume", "field", "timer", "daemon"}
NO_API = {"startup", "cleanup", "login", "probe", "mutate", "validate"}
#: kopf names core resources by plural alone.
CORE_PLURALS = {"pods", "namespaces", "secrets", "configmaps", "events", "services"}


@dataclass(frozen=True)
class Use:
    permission: Permission
    where: str


#: Run by people with their own credentials (``memwarden incidents``): not the operator's.
USER_MODULES = {"memwarden.commands.incidents"}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in USER_MODULES:
            yield name, ast.parse(path.read_text(), filename=str(path))


def _resolve(node: ast.expr, module: str) -> Any:
    """A constant, or a name/attribute looked up in the (imported) module."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(importlib.import_module(module), node.id, None)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, module)
        return None if base is None else getattr(base, node.attr, None)
    return None


def _kopf_decorator(node: ast.expr) -> tuple[str, ast.Call] | None:
    if not isinstance(node, ast.Call):
        return None
    chain, func = [], node.func
    while isinstance(func, ast.Attribute):
        chain.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id != "kopf" or not chain:
        return None
    return chain[0], node


def _kopf_resource(call: ast.Call, module: str) -> tuple[str, str] | None:
    args = [_resolve(a, module) for a in call.args]
    kwargs = {k.arg: _resolve(k.value, module) for k in call.keywords if k.arg}
    if len(args) >= 3:
        return str(args[0]), str(args[2])
    plural = kwargs.get("plural") or (args[0] if args else None)
    if plural is None:
        return None
    group = kwargs.get("group", "" if plural in CORE_PLURALS else None)
    assert group is not None, f"{module}: kopf resource {plural!r} needs its group"
    return str(group), str(plural)


def _uses_patch_status(fn: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == "status"
        and isinstance(n.value, ast.Name)
        and n.value.id == "patch"
        for n in ast.walk(fn)
    )


def kopf_uses() -> list[Use]:
    uses: list[Use] = []
    for module, tree in _modules():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in fn.decorator_list:
                found = _kopf_decorator(decorator)
                if found is None:
                    continue
                kind, call = found
                if kind in NO_API:
                    continue
                assert kind in WATCHING | CHANGING, f"{module}.{fn.name}: unknown kopf.{kind}"
                resource = _kopf_resource(call, module)
                assert resource is not None, f"{module}.{fn.name}: no resource in kopf.{kind}"
                group, plural = resource
                where = f"{module}.{fn.name} (kopf.{kind})"
                # Every object kopf watches may get a patch: kopf removes its finalizer
                # from one no handler needs it on (a policy an older memwarden left it on).
                verbs = ["list", "watch", "patch"]
                uses += [Use((group, plural, verb), where) for verb in verbs]
                uses.append(Use(("", "events", "create"), where))
                if _uses_patch_status(fn):
                    uses.append(Use((group, f"{plural}/status", "patch"), where + " patch.status"))
    return uses


@functools.cache
def client_requests() -> dict[str, dict[str, tuple[str, str]]]:
    """kubernetes client method name -> {API class: (HTTP method, request path)}, from
    its source. One name can live in several classes (``create_namespaced_event`` is in
    CoreV1Api and EventsV1Api), hence the map per class.

    Every generated ``*Api`` method has a ``_<name>_serialize`` twin that names the
    request's method and path; one regex pass per module (inspect per method is slow).
    """
    found: dict[str, dict[str, tuple[str, str]]] = {}
    pattern = re.compile(
        r"def _(\w+)_serialize\(.*?method='(\w+)',\s*resource_path='([^']+)'", re.DOTALL
    )
    api_dir = Path(inspect.getfile(kubernetes.client.CoreV1Api)).parent
    for path in sorted(api_dir.glob("*_api.py")):
        text = path.read_text()
        [api_class] = re.findall(r"^class (\w+Api)\b", text, re.MULTILINE)
        for name, method, resource_path in pattern.findall(text):
            found.setdefault(name, {})[api_class] = (method, resource_path)
    return found


AMBIGUOUS = "ambiguous"


def client_methods(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """The client methods a module can call: those of the ``client.*Api`` classes it
    names. A name still ambiguous there maps to no request, which the scan reports."""
    classes = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.endswith("Api")
    }
    methods: dict[str, tuple[str, str]] = {}
    for name, by_class in client_requests().items():
        requests = {by_class[c] for c in classes & by_class.keys()} or set(by_class.values())
        if len(requests) == 1:
            methods[name] = requests.pop()
        else:
            methods[name] = (AMBIGUOUS, name)
    return methods


def permission_of(method: str, path: str) -> tuple[str, str, str]:
    """(group, resource[/subresource], verb) of a request; group may be ``{group}``."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    named = len(rest) >= 2
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    verb = {
        ("GET", True): "get",
        ("GET", False): "list",
        ("POST", False): "create",
        ("POST", True): "create",
        ("PUT", True): "update",
        ("PATCH", True): "patch",
        ("DELETE", True): "delete",
        ("DELETE", False): "deletecollection",
    }[(method, named)]
    return group, resource, verb


def _kube_wrappers() -> dict[str, set[tuple[str, str]]]:
    """Kube method -> {(verb, subresource suffix)} of the custom-object calls it makes."""
    tree = dict(_modules())["memwarden.kube"]
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Kube")
    direct: dict[str, set[tuple[str, str]]] = {}
    calls: dict[str, set[str]] = {}
    methods = client_methods(tree)
    for fn in cls.body:
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        direct[fn.name], calls[fn.name] = set(), set()
        for node in ast.walk(fn):
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr in methods and "{plural}" in methods[node.attr][1]:
                _, resource, verb = permission_of(*methods[node.attr])
                direct[fn.name].add((verb, resource.removeprefix("{plural}")))
            elif isinstance(node.value, ast.Name) and node.value.id == "self":
                calls[fn.name].add(node.attr)
    return {
        name: direct[name].union(*(direct.get(c, set()) for c in calls[name]))
        for name in direct
        if direct[name] or any(direct.get(c) for c in calls[name])
    }


def client_uses() -> list[Use]:
    uses: list[Use] = []
    wrappers = _kube_wrappers()
    for module, tree in _modules():
        methods = client_methods(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in methods:
                if methods[node.attr][0] == AMBIGUOUS:  # fails the rule check, by name
                    uses.append(Use((AMBIGUOUS, node.attr, "?"), f"{module}: {node.attr}"))
                    continue
                group, resource, verb = permission_of(*methods[node.attr])
                if "{" not in group + resource:  # custom objects: through the wrappers below
                    uses.append(Use((group, resource, verb), f"{module}: {node.attr}"))
            if (  # a list call given ``watch=`` may watch, too
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in methods
                and methods[node.func.attr][0] != AMBIGUOUS
                and any(k.arg == "watch" for k in node.keywords)
            ):
                group, resource, verb = permission_of(*methods[node.func.attr])
                if verb == "list" and "{" not in group + resource:
                    uses.append(Use((group, resource, "watch"), f"{module}: {node.func.attr}"))
            if not isinstance(node, ast.Call):
                continue
            # podwatch.CustomObjectWatcher(group=..., plural=...): lists and watches that kind
            if isinstance(node.func, ast.Name) and node.func.id == "CustomObjectWatcher":
                given = {k.arg: _resolve(k.value, module) for k in node.keywords if k.arg}
                where = f"{module}: CustomObjectWatcher({given.get('plural')})"
                for verb in ("list", "watch"):
                    uses.append(Use((str(given["group"]), str(given["plural"]), verb), where))
            # kube.method(RESOURCE, ...) or to_thread(kube.method, RESOURCE, ...)
            candidates = [(node.func, node.args[:1])] + [
                (arg, node.args[i + 1 : i + 2]) for i, arg in enumerate(node.args)
            ]
            for func, rest in candidates:
                if not (isinstance(func, ast.Attribute) and func.attr in wrappers and rest):
                    continue
                target = _resolve(rest[0], module)
                if not isinstance(target, CustomResource):
                    continue
                for verb, suffix in wrappers[func.attr]:
                    uses.append(
                        Use((target.group, target.plural + suffix, verb), f"{module}: {func.attr}")
                    )
    return uses


@functools.cache
def used() -> dict[Permission, list[str]]:
    by_permission: dict[Permission, list[str]] = {}
    for use in kopf_uses() + client_uses():
        by_permission.setdefault(use.permission, []).append(use.where)
    return by_permission


def test_every_api_call_of_the_code_has_a_rule() -> None:
    missing = {p: w for p, w in used().items() if p not in rbac.permissions()}
    assert not missing, "rbac.py lacks: " + "; ".join(
        f"{p} for {sorted(set(w))}" for p, w in sorted(missing.items())
    )


def test_every_rule_serves_a_call_of_the_code() -> None:
    unused = sorted(rbac.permissions() - set(used()))
    assert not unused, f"rbac.py grants what the code never uses: {unused}"


def test_the_scan_sees_the_calls_it_is_meant_to_see() -> None:
    """A scan that finds nothing would pass the two tests above vacuously."""
    found = used()
    for permission in [
        ("", "pods/ephemeralcontainers", "patch"),
        ("", "pods", "watch"),
        ("", "events", "create"),
        ("memwarden.dev", "memoryincidents", "create"),
        ("memwarden.dev", "memorypolicies/status", "patch"),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
        ("", "secrets", "update"),
    ]:
        assert permission in found, permission


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers",
            ("", "pods/ephemeralcontainers", "patch"),
            id="subresource",
        ),
        pytest.param("GET", "/api/v1/pods", ("", "pods", "list"), id="cluster-list"),
        pytest.param(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            ("authentication.k8s.io", "tokenreviews", "create"),
            id="review",
        ),
        pytest.param("GET", "/api/v1/namespaces/{name}", ("", "namespaces", "get"), id="namespace"),
        pytest.param(
            "PUT",
            "/api/v1/namespaces/{namespace}/secrets/{name}",
            ("", "secrets", "update"),
            id="replace",
        ),
    ],
)
def test_request_paths_map_to_rbac_permissions(
    method: str, path: str, expected: Permission
) -> None:
    assert permission_of(method, path) == expected


def test_no_cluster_wide_secrets_and_no_unused_pod_writes() -> None:
    cluster = {
        (rule.api_group, resource)
        for rule in rbac.rules(scope="cluster")
        for resource in rule.resources
    }
    assert ("", "secrets") not in cluster
    granted = rbac.permissions()
    assert ("", "pods", "patch") not in granted  # only the ephemeralcontainers subresource
    assert ("", "pods", "update") not in granted  # resources change only through pods/resize
    assert ("", "pods", "delete") not in granted  # recreate only through evictions


def test_resizes_are_granted_where_the_pods_are_and_only_as_resizes() -> None:
    """InPlace resizes through the pods/resize subresource (container resources only, the
    API server validates each), in the watched scope; the code really calls it."""
    watched = {
        (r.api_group, res, v)
        for r in rbac.rules(scope="watched")
        for res in r.resources
        for v in r.verbs
    }
    assert ("", "pods/resize", "patch") in watched
    narrowed = rbac.rules(scope="cluster", namespaced_watch=True)
    assert not any("pods/resize" in rule.resources for rule in narrowed)
    assert ("", "pods/resize", "patch") in used()


def test_evictions_are_granted_where_the_pods_are_and_only_as_evictions() -> None:
    """Recreate evicts (PodDisruptionBudgets hold) in the watched scope: with
    ``namespaces.watch``, a Role in each watched namespace and nowhere else."""
    watched = {
        (r.api_group, res, v)
        for r in rbac.rules(scope="watched")
        for res in r.resources
        for v in r.verbs
    }
    assert ("", "pods/eviction", "create") in watched
    assert ("policy", "poddisruptionbudgets", "list") in watched
    narrowed = rbac.rules(scope="cluster", namespaced_watch=True)
    assert not any("pods/eviction" in rule.resources for rule in narrowed)
    assert ("", "pods/eviction", "create") in used()


def test_every_rule_says_why() -> None:
    for rule in rbac.RULES:
        assert len(rule.why) > 20 and "\n" not in rule.why, rule


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            "client.CoreV1Api(c).create_namespaced_event(ns, body)",
            ("", "events", "create"),
            id="core",
        ),
        pytest.param(
            "client.EventsV1Api(c).create_namespaced_event(ns, body)",
            ("events.k8s.io", "events", "create"),
            id="events.k8s.io",
        ),
        pytest.param("api.create_namespaced_event(ns, body)", None, id="unknown-class"),
    ],
)
def test_a_method_name_in_two_api_classes_resolves_by_the_class_the_module_names(
    source: str, expected: Permission | None
) -> None:
    request = client_methods(ast.parse(source))["create_namespaced_event"]
    if expected is None:
        assert request[0] == AMBIGUOUS
    else:
        assert permission_of(*request) == expected


def test_pod_level_rules_leave_the_cluster_role_when_namespaces_are_watched() -> None:
    """With ``namespaces.watch``, pods, their namespaces, ephemeral containers, evictions,
    budgets and Events are granted by a Role in each watched namespace; nothing of them
    stays cluster-wide."""
    pod_level = {
        ("", "pods"),
        ("", "namespaces"),
        ("", "pods/ephemeralcontainers"),
        ("", "pods/resize"),
        ("", "pods/eviction"),
        ("policy", "poddisruptionbudgets"),
        ("", "events"),
    }

    def resources(rules: tuple[rbac.Rule, ...]) -> set[tuple[str, str]]:
        return {(rule.api_group, r) for rule in rules for r in rule.resources}

    everywhere = rbac.rules(scope="cluster")
    watched_only = rbac.rules(scope="cluster", namespaced_watch=True)
    assert pod_level <= resources(everywhere)
    assert not pod_level & resources(watched_only)
    assert resources(rbac.rules(scope="watched")) == pod_level
    assert set(everywhere) == set(watched_only) | set(rbac.rules(scope="watched"))
