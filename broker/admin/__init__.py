"""The Django admin: model admins for staff, and the auditor role."""

# admin.autodiscover() imports this package only: importing the module registers the admins.
from broker.admin import model_admins  # noqa: F401
