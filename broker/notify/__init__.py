"""Telling services (webhooks) and users (email) what happened to a grant."""
