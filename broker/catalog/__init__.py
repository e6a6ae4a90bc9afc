"""What provider apps and access rules are made of, as data: the kinds of provider
(`provider_kinds`: protocol, endpoints, token encoding, refresh behaviour) and the proxy
rules' methods and path patterns (`proxy_paths`). The data model validates against them,
so they stand below it and import nothing of the broker."""
