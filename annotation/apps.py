from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_migrate, post_save


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"

    def ready(self) -> None:
        from rest_framework.authtoken.models import Token

        from annotation.authentication import token_deleted, user_changed
        from annotation.roles import groups_ensure

        # After training's migrations too, so its permissions exist.
        post_migrate.connect(groups_ensure, dispatch_uid="annotation.groups_ensure")
        # Revoking a token or changing its user takes effect at once in this process (the API
        # token cache of the other web workers expires within API_TOKEN_CACHE_SECONDS).
        User = get_user_model()
        post_delete.connect(token_deleted, sender=Token, dispatch_uid="annotation.token_deleted")
        post_save.connect(user_changed, sender=User, dispatch_uid="annotation.user_saved")
        post_delete.connect(user_changed, sender=User, dispatch_uid="annotation.user_deleted")
