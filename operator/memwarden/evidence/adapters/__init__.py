"""Evidence adapters: the HTTP API (aiohttp), its Kubernetes authentication, the store on disk."""
