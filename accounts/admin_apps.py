"""Django's admin app with the broker's admin site (accounts.admin_site): Django's documented
way to replace the default site. Its own module, importing nothing of the project, since the
app registry imports it before any model exists."""

from django.contrib.admin.apps import AdminConfig


class BrokerAdminConfig(AdminConfig):
    default_site = "accounts.admin_site.BrokerAdminSite"
