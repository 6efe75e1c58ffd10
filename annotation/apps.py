from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"

    def ready(self) -> None:
        from annotation.roles import ROLE_PERMISSIONS, groups_ensure, role_permissions_register

        role_permissions_register(app_label=self.label, table=ROLE_PERMISSIONS)
        # After training's migrations too, so its permissions exist.
        post_migrate.connect(groups_ensure, dispatch_uid="annotation.groups_ensure")
