"""The admission webhook's TLS and serving: certificates and their rotation, live reload,
the review server, its worker processes, and the webhook/guard manifests."""
