"""The internal API for services (/api/v1/): authentication, access rules, tokens."""
