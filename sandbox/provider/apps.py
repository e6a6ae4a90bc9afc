from django.apps import AppConfig
from django.conf import settings


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
        if settings.SANDBOX_TEST_SWITCHES:
            from django.db.models.signals import post_delete
            from oauth2_provider.models import AccessToken

            from sandbox.provider import switches

            post_delete.connect(switches.record_access_token_retired, sender=AccessToken)
