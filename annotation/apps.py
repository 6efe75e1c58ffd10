from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"

    def ready(self) -> None:
        from annotation.models import ConsensusJob, ImportJob, Snapshot, TaskBatch
        from annotation.roles import ROLE_PERMISSIONS, groups_ensure, role_permissions_register
        from core.jobs import job_kind_register

        job_kind_register(label="snapshots", model=Snapshot, task="annotation.tasks.snapshot_build")
        job_kind_register(
            label="task batches", model=TaskBatch, task="annotation.tasks.task_batch_run"
        )
        job_kind_register(
            label="consensus", model=ConsensusJob, task="annotation.tasks.consensus_compute"
        )
        job_kind_register(label="imports", model=ImportJob, task="annotation.tasks.import_run")
        role_permissions_register(app_label=self.label, table=ROLE_PERMISSIONS)
        # After training's migrations too, so its permissions exist.
        post_migrate.connect(groups_ensure, dispatch_uid="annotation.groups_ensure")
