"""A cheap password hasher for the sandbox's throwaway demo users and client secrets."""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class SandboxPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2 with few iterations: the sandbox holds dev-only secrets and must be fast."""

    algorithm = "sandbox_pbkdf2_sha256"
    iterations = 1000
