"""The pod index: every running pod of the governed namespaces, as the small view policies
read, kept current by a list and watch of our own.

Not a kopf index: kopf handles each pod event as a resource cause (a deep copy, a
diff-base, handler matching, a worker task per pod), about a millisecond of the event
loop that admission shares, per event, for objects memwarden never changes. Here a
thread lists and watches pods with the kubernetes client, parses each event with orjson,
trims it to ``status.pod_view`` (a few hundred bytes; whole pod bodies are never kept)
and hands the view to the event loop, where the index is updated and the status book is
told. Read like ``kopf.Index``: ``index.get(namespace, [])`` and iteration over
namespaces.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import orjson
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from memwarden.heap import compact_json
from memwarden.status import StatusBook, pod_view

logger = logging.getLogger(__name__)

View = dict[str, Any]
#: Pods per page of the initial list: bounded memory while listing 10,000 pods.
LIST_PAGE = 500
#: The API server ends a watch after this; it is then resumed from the last version.
WATCH_SECONDS = 300
#: Longest wait between two attempts after an error (doubling from 1 s).
MAX_BACKOFF_SECONDS = 30.0


class PodIndex:
    """namespace -> {pod name -> view}. Updated on the event loop only (see module doc).

    Each view is kept encoded (orjson bytes, keys sorted): a few hundred bytes a pod
    instead of a few kilobytes of dicts, and comparing two encodings tells whether a pod
    changed in a way policies see. Decoding a namespace's views for a pass costs ~5 µs
    a pod.
    """

    def __init__(self, *, book: StatusBook, governed: Callable[[str], bool]) -> None:
        self._by_namespace: dict[str, dict[str, bytes]] = {}
        self._book = book
        self._governed = governed
        self.listed = asyncio.Event()
        """Set once every watcher's first complete list is in: before, the index is partial."""
        self.expected_scopes: set[str | None] | None = None
        """The namespaces listed separately (None: the cluster, one list); set by whoever
        starts the watchers."""
        self._listed_scopes: set[str | None] = set()

    def get(self, namespace: str, default: list[View] | None = None) -> list[View]:
        pods = self._by_namespace.get(namespace)
        if not pods:
            return list(default or [])
        return [orjson.loads(encoded) for encoded in list(pods.values())]

    def __getitem__(self, namespace: str) -> list[View]:
        return self.get(namespace)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_namespace))

    def __len__(self) -> int:
        return sum(len(pods) for pods in self._by_namespace.values())

    def apply(self, namespace: str, name: str, view: View | None) -> None:
        """One watch event: the pod's new view, or None when it is gone or done."""
        if not self._governed(namespace):
            return
        pods = self._by_namespace.get(namespace)
        if view is None:
            if pods is not None and pods.pop(name, None) is not None:
                self._book.touch(namespace)
                if not pods:
                    del self._by_namespace[namespace]
            return
        encoded = compact_json(view, option=orjson.OPT_SORT_KEYS)
        if pods is None:
            pods = self._by_namespace[namespace] = {}
        if pods.get(name) != encoded:  # the scheduler's status updates change no view
            pods[name] = encoded
            self._book.touch(namespace)

    def replace_all(
        self, views: Mapping[str, Mapping[str, View]], *, namespace: str | None = None
    ) -> None:
        """A complete list (at start, or after the watch lost its place) of the cluster,
        or of ``namespace`` only: with a watcher per namespace, one's list must not drop
        the pods of the others."""
        gone = [
            (ns, name)
            for ns, pods in self._by_namespace.items()
            if namespace is None or ns == namespace
            for name in pods
            if name not in views.get(ns, {})
        ]
        for ns, name in gone:
            self.apply(ns, name, None)
        for ns, pods in views.items():
            for name, view in pods.items():
                self.apply(ns, name, view)
        self._listed_scopes.add(namespace)
        if self.expected_scopes is None or self._listed_scopes >= self.expected_scopes:
            self._book.ready = True
            self.listed.set()


def _identity(pod: Mapping[str, Any]) -> tuple[str, str]:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


class ListWatcher(threading.Thread):
    """Lists, then watches, one kind of object (cluster-wide or one namespace) in a thread,
    parsing the raw stream with orjson; subclasses say which request and what each list
    item and each event becomes (``_request``, ``_listed``, ``_event``)."""

    #: What the log lines call the objects (``pods``, ``policies``).
    noun = "objects"

    def __init__(self, *, loop: asyncio.AbstractEventLoop, namespace: str | None = None) -> None:
        super().__init__(name=f"{self.noun}-watch-{namespace or 'cluster'}", daemon=True)
        self._loop = loop
        self._namespace = namespace
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _request(self, *, watch: bool, **kwargs: Any) -> urllib3.HTTPResponse:
        """The list (or watch) request, as the raw response (``_preload_content=False``)."""
        raise NotImplementedError

    def _listed(self, items: list[dict[str, Any]]) -> Any:
        """What one page's items become, kept until the list is complete (small views,
        never whole bodies, so a list of 10,000 objects stays small)."""
        raise NotImplementedError

    def _complete(self, pages: list[Any]) -> None:
        """The whole list is in: hand it to the event loop."""
        raise NotImplementedError

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event (ADDED, MODIFIED, DELETED): hand it to the event loop."""
        raise NotImplementedError

    def _list(self) -> str:
        """Every object, page by page; returns the version to watch from."""
        pages: list[Any] = []
        token: str | None = None
        while True:
            page = orjson.loads(
                self._request(
                    watch=False, limit=LIST_PAGE, _continue=token, _request_timeout=60
                ).data
            )
            pages.append(self._listed(page.get("items") or []))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                self._complete(pages)
                return str(metadata.get("resourceVersion") or "")

    def _watch(self, version: str) -> str | None:
        """Follow changes from ``version``; the version reached, or None to list again."""
        response = self._request(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(10, WATCH_SECONDS + 30),
        )
        try:
            pending = b""
            for chunk in response.stream(64 * 1024, decode_content=True):
                if self._stopping.is_set():
                    return None
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":  # 410 Gone: our version is too old; list again
                        logger.info("%s watch: %s; listing again", self.noun, obj.get("message"))
                        return None
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind == "BOOKMARK":
                        continue
                    self._event(str(kind), obj)
        finally:
            response.release_conn()
        return version

    def run(self) -> None:
        delay = 1.0
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                delay = 1.0
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if isinstance(exc, ApiException) and exc.status == 410:
                    version = None
                    continue
                logger.warning("%s watch failed (%s); again in %gs", self.noun, exc, delay)
                version = None
                self._stopping.wait(delay)
                delay = min(MAX_BACKOFF_SECONDS, delay * 2)


class PodWatcher(ListWatcher):
    """Pods, trimmed to their views; each change reaches ``index`` through the event loop
    (``loop.call_soon_threadsafe``)."""

    noun = "pod"

    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        index: PodIndex,
        loop: asyncio.AbstractEventLoop,
        namespace: str | None = None,
    ) -> None:
        super().__init__(loop=loop, namespace=namespace)
        self._core = client.CoreV1Api(api_client)
        self._index = index

    def _request(self, *, watch: bool, **kwargs: Any) -> urllib3.HTTPResponse:
        if self._namespace is None:
            response = self._core.list_pod_for_all_namespaces(
                watch=watch, _preload_content=False, **kwargs
            )
        else:
            response = self._core.list_namespaced_pod(
                self._namespace, watch=watch, _preload_content=False, **kwargs
            )
        return cast(urllib3.HTTPResponse, response)

    def _listed(self, items: list[dict[str, Any]]) -> Any:
        views: list[tuple[str, str, View]] = []
        for pod in items:
            view = pod_view(pod)
            if view is not None:
                views.append((*_identity(pod), view))
        return views

    def _complete(self, pages: list[Any]) -> None:
        views: dict[str, dict[str, View]] = {}
        for page in pages:
            for namespace, name, view in page:
                views.setdefault(namespace, {})[name] = view
        self._loop.call_soon_threadsafe(
            functools.partial(self._index.replace_all, views, namespace=self._namespace)
        )

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        namespace, name = _identity(obj)
        view = None if kind == "DELETED" else pod_view(obj)
        self._loop.call_soon_threadsafe(self._index.apply, namespace, name, view)


class CustomObjectWatcher(ListWatcher):
    """Custom objects of one kind (MemoryPolicies for admission on every replica,
    ``handlers/serving.py``), whole: ``on_list`` gets every object once the list is
    complete, ``on_event`` each change, both on the event loop."""

    noun = "custom object"

    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        group: str,
        version: str,
        plural: str,
        loop: asyncio.AbstractEventLoop,
        on_list: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        namespace: str | None = None,
    ) -> None:
        self.noun = plural
        super().__init__(loop=loop, namespace=namespace)
        self._custom = client.CustomObjectsApi(api_client)
        self._resource = (group, version, plural)
        self._on_list = on_list
        self._on_event = on_event

    def _request(self, *, watch: bool, **kwargs: Any) -> urllib3.HTTPResponse:
        group, version, plural = self._resource
        if self._namespace is None:
            response = self._custom.list_cluster_custom_object(
                group, version, plural, watch=watch, _preload_content=False, **kwargs
            )
        else:
            response = self._custom.list_namespaced_custom_object(
                group,
                version,
                self._namespace,
                plural,
                watch=watch,
                _preload_content=False,
                **kwargs,
            )
        return cast(urllib3.HTTPResponse, response)

    def _listed(self, items: list[dict[str, Any]]) -> Any:
        return items

    def _complete(self, pages: list[Any]) -> None:
        self._loop.call_soon_threadsafe(self._on_list, [obj for page in pages for obj in page])

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self._loop.call_soon_threadsafe(self._on_event, kind, obj)


__all__ = ["CustomObjectWatcher", "ListWatcher", "PodIndex", "PodWatcher"]
