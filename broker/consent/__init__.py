"""Users consenting: pending state, the OAuth 2.0 and 1.0a flows, the grants they store, the
connections pages, connect links and return URLs."""
