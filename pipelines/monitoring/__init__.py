"""Watching the platform run: health checks, Prometheus metrics, anomaly detection, alerts and the
analytics dashboard. Read-only over what the steps write (Redis, the lake, MLflow, the app DB)."""
