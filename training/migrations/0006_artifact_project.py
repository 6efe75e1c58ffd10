import django.db.models.deletion
from django.db import migrations, models


def artifacts_into_their_runs_project(apps, schema_editor):
    """A run's artifact belongs to the run's project; a registered base model, to no project
    until an engineer registers it into one (superusers still see it)."""
    ModelArtifact = apps.get_model("training", "ModelArtifact")
    for artifact in ModelArtifact.objects.filter(run__isnull=False).select_related("run"):
        artifact.project_id = artifact.run.project_id
        artifact.save(update_fields=["project"])


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0006_snapshot_job"),
        ("training", "0005_run_generation_job"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelartifact",
            name="project",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="artifacts",
                to="annotation.project",
            ),
        ),
        migrations.RunPython(artifacts_into_their_runs_project, migrations.RunPython.noop),
    ]
