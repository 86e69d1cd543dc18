"""Prometheus side of monitoring: alert/recording rules rendered from params.yaml and the scrape config."""
