from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        from annotation.roles import role_permissions_register
        from training.roles import ROLE_PERMISSIONS

        role_permissions_register(app_label=self.label, table=ROLE_PERMISSIONS)
