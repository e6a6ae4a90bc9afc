"""broker.settings as deployed (hashed, compressed static files served by WhiteNoise from
STATIC_ROOT), with STATIC_ROOT in a test's temporary directory. The secrets come from the
environment tests/settings.py prepared."""

import os

from broker.settings import *  # noqa: F403

STATIC_ROOT = os.environ["TEST_STATIC_ROOT"]
