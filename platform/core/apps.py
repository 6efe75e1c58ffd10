from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from rest_framework.authtoken.models import Token

        from core.authentication import token_deleted, user_changed

        # Revoking a token or changing its user takes effect at once in this process (the API
        # token cache of the other web workers expires within API_TOKEN_CACHE_SECONDS).
        User = get_user_model()
        post_delete.connect(token_deleted, sender=Token, dispatch_uid="core.token_deleted")
        post_save.connect(user_changed, sender=User, dispatch_uid="core.user_saved")
        post_delete.connect(user_changed, sender=User, dispatch_uid="core.user_deleted")
