"""Who a service is, and how it proves it: its secrets (`service_secrets`), registered keys
and certificates (`service_keys`), private_key_jwt assertions (`client_assertions`), app
tokens from trusted identity providers (`federation`), client authentication at the token
endpoint built on those (`client_authentication`), and the broker tokens it then carries
(`tokens`). No HTTP answers here: broker.api turns a refusal into one."""
