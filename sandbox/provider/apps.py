from django.apps import AppConfig


class ProviderConfig(AppConfig):
    name = "sandbox.provider"
    label = "sandbox_provider"
    verbose_name = "Sandbox provider"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # oauthlib delegates RSA-SHA1 verification to PyJWT, which the project does not
        # install; register a cryptography-based implementation instead.
        from sandbox.provider import oauth1_rsa

        oauth1_rsa.install()
