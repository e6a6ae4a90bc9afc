#!/usr/bin/env python
"""Run the development-only sandbox provider: `python sandbox/manage.py <command>`."""

import os
import sys
from pathlib import Path


def main() -> None:
    # The sandbox is its own Django project; put the project root (the parent of
    # sandbox/) on sys.path so `sandbox.settings` imports from any working directory.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
