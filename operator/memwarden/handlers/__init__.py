"""kopf handlers: the only wiring between the cluster and memwarden's pure core.

Importing this package registers every handler once; run it as a module
(``memwarden run`` or ``kopf run -m memwarden.handlers``), never by file path.
"""

from memwarden.handlers import admission, indexes, policies, startup

__all__ = ["admission", "indexes", "policies", "startup"]
