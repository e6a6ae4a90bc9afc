"""Revoking grants, one (here and at the provider) or many (bulk jobs)."""
