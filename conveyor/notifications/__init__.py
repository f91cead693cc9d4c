"""Notification channels, templates and unsubscribe links: what the notifications pool sends
with, free of the database, the broker and HTTP frameworks."""
