"""Infrastructure every concern shares, written once: outbound HTTP, Redis, the client's address."""
