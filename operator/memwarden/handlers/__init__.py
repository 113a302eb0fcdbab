"""kopf handlers: the only wiring between the cluster and memwarden's pure core.

Importing this package registers every handler once; run it as a module
(``memwarden run`` or ``kopf run -m memwarden.handlers``), never by file path.
"""

from memwarden.handlers import (
    admission,
    http,
    incidents,
    indexes,
    policies,
    risk,
    startup,
    updates,
)

__all__ = ["admission", "http", "incidents", "indexes", "policies", "risk", "startup", "updates"]
