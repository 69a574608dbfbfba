"""Daily market analysis: per-ticker metrics and a note on the day's moves."""
