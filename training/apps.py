from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        from annotation.roles import role_permissions_register
        from core.jobs import job_kind_register
        from training.models import BaseModelFetch, GenerationJob, Round, TrainingRun
        from training.roles import ROLE_PERMISSIONS

        role_permissions_register(app_label=self.label, table=ROLE_PERMISSIONS)
        job_kind_register(label="runs", model=TrainingRun, task="training.tasks.run_train")
        job_kind_register(
            label="generation", model=GenerationJob, task="training.tasks.generation_run"
        )
        job_kind_register(label="rounds", model=Round, task="training.tasks.round_run")
        job_kind_register(
            label="base models", model=BaseModelFetch, task="training.tasks.base_model_fetch"
        )
        from core.jobs import job_settler_register
        from training.arena import battle_sets_settle

        job_settler_register(battle_sets_settle)
        from core.panels import panel_contribute
        from training.rounds import rounds_panel

        panel_contribute(page="curate", panel=rounds_panel)
