from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import post_delete, post_save


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from rest_framework.authtoken.models import Token

        from core.authentication import token_deleted, user_changed
        from core.login import logged_in, login_failed

        # Revoking a token or changing its user takes effect at once in this process (the API
        # token cache of the other web workers expires within API_TOKEN_CACHE_SECONDS).
        User = get_user_model()
        post_delete.connect(token_deleted, sender=Token, dispatch_uid="core.token_deleted")
        post_save.connect(user_changed, sender=User, dispatch_uid="core.user_saved")
        post_delete.connect(user_changed, sender=User, dispatch_uid="core.user_deleted")
        # The log-in limit counts failures of every form that checks a password (core/login.py).
        user_login_failed.connect(login_failed, dispatch_uid="core.login_failed")
        user_logged_in.connect(logged_in, dispatch_uid="core.logged_in")
