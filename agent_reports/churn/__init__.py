"""Weekly churn report: score active customers, explain the risk, email it once."""
