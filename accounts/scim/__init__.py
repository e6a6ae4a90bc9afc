"""SCIM 2.0 (RFC 7643, RFC 7644) at /scim/v2/: the company IdP (Okta, Entra ID) creates,
updates and deactivates broker users and their groups.

`tokens` authenticates the IdP, `filters` reads the one filter shape IdPs send, `resources`
writes users and groups as SCIM resources, `provisioning` is the only writer of what SCIM
changes (each change audited in its transaction), `views` is the HTTP layer.
"""
