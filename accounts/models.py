from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """The broker's user. A custom model from the first migration, so it can grow later."""
