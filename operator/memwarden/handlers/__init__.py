"""kopf handlers: the only wiring between the cluster and memwarden's pure core.

Importing this package registers every handler once; run it as a module
(``memwarden run`` or ``kopf run -m memwarden.handlers``), never by file path.

``state.build_state`` is the first start-up handler kopf runs (they run in registration
order): every handler module imports ``state`` before it defines its own handlers.
"""

from memwarden.handlers import (
    admission,
    http,
    incidents,
    indexes,
    policies,
    risk,
    startup,
    state,
    updates,
)

__all__ = [
    "admission",
    "http",
    "incidents",
    "indexes",
    "policies",
    "risk",
    "startup",
    "state",
    "updates",
]
