"""Who may call what: API keys, rate limits, the cluster token, TLS (SECURITY.md)."""
