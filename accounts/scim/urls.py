"""SCIM 2.0 under /scim/v2/ (RFC 7644 3.2): the paths Okta and Entra ID call."""

from django.urls import path

from accounts.scim import views

urlpatterns = [
    path("Users", views.users, name="scim-users"),
    path("Users/<str:resource_id>", views.user, name="scim-user"),
    path("Groups", views.groups, name="scim-groups"),
    path("Groups/<str:resource_id>", views.group, name="scim-group"),
    path("ServiceProviderConfig", views.service_provider_config, name="scim-config"),
    path("ResourceTypes", views.resource_types, name="scim-resource-types"),
    path("ResourceTypes/<str:name>", views.resource_types, name="scim-resource-type"),
    path("Schemas", views.schemas, name="scim-schemas"),
    path("Schemas/<str:urn>", views.schemas, name="scim-schema"),
    path("<path:rest>", views.unknown),
]
