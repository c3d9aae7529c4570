"""The cluster simulator: the gateway's own scheduler over simulated nodes, in virtual time.

    timing     the latency model (shared with the real-time `sim` engine)
    events     the discrete-event core: a virtual clock and a heap of callbacks
    workloads  request shapes, arrival processes, trace readers
    node       one simulated Ollama node (residency rules, timing profile, KV caches)
    cluster    the nodes behind `scheduler.router.Router`, telemetry, failover, timeouts
    run        one workload against several strategies -> the comparison report
"""
