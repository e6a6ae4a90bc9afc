"""`runserver` on the sandbox's own default port (8001), beside the broker's 8000."""

from django.core.management.commands.runserver import Command as RunserverCommand


class Command(RunserverCommand):
    default_port = "8001"
