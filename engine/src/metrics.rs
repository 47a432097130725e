//! Per-core counters and the Prometheus endpoint. (Placeholder.)
