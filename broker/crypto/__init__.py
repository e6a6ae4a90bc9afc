"""Encryption at rest: the key ring, sealed model fields, key rotation."""
