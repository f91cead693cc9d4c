"""Notifications: channels, templates and the delivery of messages to people and systems."""
