#!/usr/bin/env python
"""Django's command-line entry point for the broker."""

import os
import sys
from importlib import import_module

# Commands that make the secrets the settings require (BROKER_ENCRYPTION_KEYS): they run
# without reading the settings, since a new installation has none of those secrets yet.
SECRET_MAKERS = {"generatekey": "broker.management.commands.generatekey"}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")
    from django.core.management import execute_from_command_line

    from broker.ops.startup import configuration_errors_exit

    if len(sys.argv) > 1 and sys.argv[1] in SECRET_MAKERS:
        import_module(SECRET_MAKERS[sys.argv[1]]).Command().run_from_argv(sys.argv)
        return
    with configuration_errors_exit():
        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
