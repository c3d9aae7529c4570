"""What the cluster is doing, measured without slowing it: lock-free instruments recorded on
the request path, sliding-window percentiles, a once-a-second sampler, and the JSON snapshot
the dashboard, ``ollamamax status`` and ``ollamamax top`` show (docs/metrics.md)."""
