"""The sandbox with Atlassian's documented reuse window: a consumed refresh token still
works for ten minutes (returning what its first use returned). Only for tests of failures
where the broker cannot know whether the provider processed a refresh (a timeout, a worker
killed mid-call); everything else runs against the strict sandbox."""

from sandbox.settings import *  # noqa: F403
from sandbox.settings import OAUTH2_PROVIDER

OAUTH2_PROVIDER = {**OAUTH2_PROVIDER, "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 600}
