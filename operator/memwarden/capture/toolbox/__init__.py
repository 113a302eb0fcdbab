"""``memwarden capture``: the evidence toolbox, run inside the ephemeral debug container.

Collects, from one Go process, pprof profiles (heap, allocs, goroutine and its text
dump), an execution trace, a core (``gcore``), ``/proc/PID/{status,smaps_rollup}`` and
the cgroup v2 memory files, and delivers them as ONE tar.gz bundle with a
``manifest.json`` (sha256 per member) to a file or an HTTP PUT.

Memory discipline: an ephemeral container has no limit of its own and counts against the
pod it is trying to save, so nothing here holds an artifact in memory. HTTP bodies and
/proc files are copied in 1 MiB chunks to temp files (hashed on the way), gcore writes its
own file, and the bundle is generated chunk by chunk from those files into the output
file or the chunked request body. Every step has its own timeout and its failure is
recorded in the manifest, never allowed to stop the other steps.

Standard library only (and memwarden's pure helpers): the toolbox image has no kopf,
no Kubernetes client and no pydantic (an import-linter contract holds it to that).
One module per section: model (constants, options, entries), copying, steps (collection),
bundle, delivery, summary, command (``add_arguments``/``run``, which the CLI calls).
"""

from __future__ import annotations

from memwarden.capture.toolbox.bundle import (
    bundle_size_bound,
    iter_bundle,
)
from memwarden.capture.toolbox.command import (
    add_arguments,
    run,
)
from memwarden.capture.toolbox.model import (
    CGROUP_FILES,
    CHUNK,
    MANIFEST_MEMBER,
    SUMMARY_LIMIT,
    DeliveryError,
    Entry,
    Options,
    StepError,
)
from memwarden.capture.toolbox.steps import (
    collect,
    resolve_cgroup_dir,
)
from memwarden.capture.toolbox.summary import (
    render_summary,
)

__all__ = [
    "CGROUP_FILES",
    "CHUNK",
    "MANIFEST_MEMBER",
    "SUMMARY_LIMIT",
    "DeliveryError",
    "Entry",
    "Options",
    "StepError",
    "add_arguments",
    "bundle_size_bound",
    "collect",
    "iter_bundle",
    "render_summary",
    "resolve_cgroup_dir",
    "run",
]
