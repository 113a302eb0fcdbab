"""The Prometheus adapter: instant queries in, ``Sample``s out, our own error on failure.

The only module of memwarden that talks to Prometheus. prometheus-api-client is
synchronous: async code calls ``aquery``, which runs it in a worker thread so the event
loop (admission webhook included) never waits on Prometheus.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter  # `time` is query()'s parameter
from typing import Any

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from memwarden.observability import metrics
from memwarden.risk.promql import Sample, Series

#: Error messages are cut to this length: a Prometheus error page can be long.
MAX_MESSAGE = 300


class PrometheusError(Exception):
    """Base of the adapter's errors."""

    #: The reason of the RiskEvaluation condition a failed cycle writes.
    reason = "PrometheusUnavailable"


class PrometheusUnavailable(PrometheusError):
    """Prometheus did not answer, answered too slowly, or refused the query."""


class RecordingRulesMissing(PrometheusError):
    """Recording rules are required (``risk_recording_rules=on``) and Prometheus has none
    for the operator's windows."""

    reason = "RecordingRulesMissing"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


class PrometheusClient:
    """Instant queries against one Prometheus, each bounded by ``timeout`` seconds.

    No retries here (``Retry(total=False)``: urllib3 raises its first error as it is):
    the risk loop backs off per policy, and a retry inside one cycle would only make a
    slow Prometheus slower.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._connect = PrometheusConnect(url=self.url, retry=Retry(total=False), timeout=timeout)
        self._lock = threading.Lock()
        self._queries = 0
        # One query at a time, on a thread of its own: a query costs a few ms of Python
        # (requests, JSON) holding the GIL, and a cycle's dozens at once in the default
        # executor starved the event loop, so admission, for the length of the burst
        # (bench/admission_busy_bench.py: p99 4 ms -> 48 ms).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prometheus")

    @property
    def queries(self) -> int:
        """Queries sent so far (answered or not): for tests, the benchmark and metrics."""
        return self._queries

    def query(self, expr: str, *, time: dt.datetime | None = None) -> list[Sample]:
        """Evaluate ``expr`` at ``time`` (default: Prometheus' now) as an instant vector."""
        params: dict[str, Any] = {"timeout": f"{self.timeout:g}s"}
        if time is not None:
            params["time"] = f"{time.timestamp():.3f}"
        return _samples(self._send(lambda: self._connect.custom_query(expr, params=params)))

    def query_range(
        self, expr: str, *, start: dt.datetime, end: dt.datetime, step: float
    ) -> list[Series]:
        """Evaluate ``expr`` from ``start`` to ``end`` every ``step`` seconds (a matrix):
        for history (``memwarden recommend``), never for the risk loop."""
        params: dict[str, Any] = {"timeout": f"{self.timeout:g}s"}
        return _series(
            self._send(
                lambda: self._connect.custom_query_range(
                    expr, start_time=start, end_time=end, step=f"{step:g}", params=params
                )
            )
        )

    def _send(self, call: Callable[[], Any]) -> Any:
        """Run one request, counted and timed, its failures mapped to PrometheusUnavailable."""
        with self._lock:
            self._queries += 1
        started, outcome = perf_counter(), "error"
        try:
            result = call()
            outcome = "ok"
        except (requests.Timeout, urllib3.exceptions.TimeoutError) as exc:
            raise PrometheusUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise PrometheusUnavailable(_short(f"{self.url}: {exc}")) from exc
        except PrometheusApiClientException as exc:
            raise PrometheusUnavailable(_short(f"{self.url}: {exc}")) from exc
        except ValueError as exc:  # a body that is not JSON: a proxy's error page
            raise PrometheusUnavailable(_short(f"{self.url}: bad response: {exc}")) from exc
        finally:
            metrics.PROMETHEUS_QUERY_SECONDS.labels(outcome=outcome).observe(
                perf_counter() - started
            )
        return result

    async def aquery(self, expr: str, *, time: dt.datetime | None = None) -> list[Sample]:
        """``query`` off the event loop, one at a time (see ``__init__``)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self.query, expr, time=time)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._connect.close()


def _samples(result: Any) -> list[Sample]:
    """Vector elements -> Samples; a scalar or a malformed element is an error."""
    if not isinstance(result, list):
        raise PrometheusUnavailable(_short(f"expected a vector, got {type(result).__name__}"))
    samples = []
    for item in result:
        try:
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PrometheusUnavailable(_short(f"malformed sample {item!r}")) from exc
        samples.append(Sample(labels=labels, value=value))
    return samples


def _series(result: Any) -> list[Series]:
    """Matrix elements -> Series; a malformed element is an error."""
    if not isinstance(result, list):
        raise PrometheusUnavailable(_short(f"expected a matrix, got {type(result).__name__}"))
    series = []
    for item in result:
        try:
            labels = {str(k): str(v) for k, v in item["metric"].items()}
            points = tuple((float(t), float(v)) for t, v in item["values"])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise PrometheusUnavailable(_short(f"malformed series {str(item)[:200]}")) from exc
        series.append(Series(labels=labels, points=points))
    return series


__all__ = [
    "PrometheusClient",
    "PrometheusError",
    "PrometheusUnavailable",
    "RecordingRulesMissing",
]
