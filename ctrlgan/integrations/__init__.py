"""Integrations with other systems, each behind its optional extra (e.g. ``ctrlgan[ray]``).
Nothing here is imported by the rest of ctrlgan."""
