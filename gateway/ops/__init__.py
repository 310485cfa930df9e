"""Operations: Prometheus metrics, the /healthz + /metrics admin listener, housekeeping purges."""
