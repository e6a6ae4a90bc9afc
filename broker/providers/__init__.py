"""The providers: catalog, providers file, the provider-side OAuth 1.0a and 2.0 clients,
account lookup."""
