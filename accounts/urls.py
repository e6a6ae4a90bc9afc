"""Sign-in (password form field names `username`, `password`; single sign-on) and sign-out."""

from django.urls import path

from accounts import views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("oidc/login", views.oidc_login, name="oidc-login"),
    path("oidc/callback", views.oidc_callback, name="oidc-callback"),
]
