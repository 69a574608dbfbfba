"""The access-log store as an asset (core/log_store.py holds the store itself)."""
