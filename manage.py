#!/usr/bin/env python
"""Django's command-line entry point for the broker."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")
    from django.core.management import execute_from_command_line

    from broker.ops.startup import configuration_errors_exit

    with configuration_errors_exit():
        execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
