"""Monthly compliance audit: schedule coverage, deliveries and access-log policy findings."""
