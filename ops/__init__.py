"""Operations as code: the Grafana dashboard and the Prometheus alerting rules of the chart."""
