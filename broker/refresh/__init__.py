"""Keeping grants' access tokens fresh: the refresh engine, its schedule and its tasks."""
