"""Running the broker: logging, metrics, health, middleware, error pages, start-up checks."""
