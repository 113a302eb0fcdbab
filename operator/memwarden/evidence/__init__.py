"""Evidence storage and access. Modules here are pure (upload tokens, the rate limiter);
the HTTP API, its Kubernetes authentication and the store on disk are in
:mod:`memwarden.evidence.adapters`. The `memwarden incidents` client is in commands/."""
