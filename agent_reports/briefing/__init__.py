"""The weekday morning briefing for New York: the latest market, anomaly and churn reports
combined into one page, emailed once."""
