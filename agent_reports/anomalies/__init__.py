"""Hourly anomaly detection on web-server access logs, with an alert when severe."""
