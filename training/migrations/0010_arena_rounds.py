"""Arena battle sets get a round of their own (an arena `Round`) instead of the fixed round 100
their tasks had; `Round` and `ArenaBattleSet` take the job statuses (`core.models.JobStatus`).

Existing data: a round's "succeeded" becomes "done"; a battle set's "generating" becomes
"running" and "ready" "done". Each battle set gets an arena round numbered after the project's
rounds (and the rounds of its tasks other than the old arena round 100), and its generation
jobs and its battles (the arena tasks of round 100 whose responses it generated) move to it."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Max

OLD_ARENA_ROUND = 100


def arena_rounds(apps, schema_editor):
    Round = apps.get_model("training", "Round")
    ArenaBattleSet = apps.get_model("training", "ArenaBattleSet")
    GenerationJob = apps.get_model("training", "GenerationJob")
    Task = apps.get_model("annotation", "Task")
    Round.objects.filter(status="succeeded").update(status="done")
    ArenaBattleSet.objects.filter(status="generating").update(status="running")
    ArenaBattleSet.objects.filter(status="ready").update(status="done")
    for battle_set in ArenaBattleSet.objects.filter(round__isnull=True).order_by("pk"):
        artifacts = list(battle_set.artifacts.order_by("pk"))
        if not artifacts:  # never made so (a set names two models at least); nothing to move
            continue
        project_id = battle_set.project_id
        last_round = Round.objects.filter(project_id=project_id).aggregate(n=Max("number"))["n"]
        tasks = Task.objects.filter(project_id=project_id).exclude(
            kind="arena", round=OLD_ARENA_ROUND
        )
        last_task = tasks.aggregate(n=Max("round"))["n"]
        number = max(last_round or 0, last_task or 0) + 1
        prompts = sorted(battle_set.prompts.values_list("pk", flat=True))
        arena_round = Round.objects.create(
            project_id=project_id, number=number, policy=artifacts[-1], kind="arena",
            budget=len(prompts), k=2, temperature=battle_set.temperature,
            top_p=battle_set.top_p, max_new_tokens=battle_set.max_new_tokens,
            seed=battle_set.seed, retries=0, status="done",
            started_at=battle_set.created_at, finished_at=battle_set.created_at,
            created_by_id=battle_set.created_by_id,
            selection={"criterion": "the battle set's prompts, chosen by its author",
                       "prompts": prompts, "battle_set": battle_set.pk},
            counts={"battles": battle_set.battles_created, "tasks": battle_set.battles_created},
        )  # fmt: skip
        arena_round.generators.set(artifacts)
        jobs = GenerationJob.objects.filter(battle_set=battle_set)
        arena_round.generation_jobs.set(jobs)
        job_ids = set(jobs.values_list("pk", flat=True))
        jobs.update(round=number)
        battle_set.round = arena_round
        battle_set.save(update_fields=["round"])
        battles = Task.objects.filter(project_id=project_id, kind="arena", round=OLD_ARENA_ROUND)
        moved = [
            task.pk
            for task in battles.prefetch_related("candidates")
            if any(
                r.generation.get("battle_set") == battle_set.pk
                or r.generation.get("job") in job_ids
                for r in task.candidates.all()
            )
        ]
        Task.objects.filter(pk__in=moved).update(round=number)


def job_statuses_back(apps, schema_editor):
    Round = apps.get_model("training", "Round")
    ArenaBattleSet = apps.get_model("training", "ArenaBattleSet")
    Round.objects.filter(status="done").update(status="succeeded")
    ArenaBattleSet.objects.filter(status__in=["queued", "running"]).update(status="generating")
    ArenaBattleSet.objects.filter(status="done").update(status="ready")


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0009_rounds"),
        ("annotation", "0014_playground"),
    ]

    operations = [
        migrations.AddField(
            model_name="arenabattleset",
            name="round",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="battle_set",
                to="training.round",
            ),
        ),
        migrations.AlterField(
            model_name="arenabattleset",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("done", "Done"),
                    ("failed", "Failed"),
                ],
                default="running",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="round",
            name="kind",
            field=models.CharField(
                choices=[("rank", "Rank"), ("compare", "Compare"), ("arena", "Arena")],
                default="rank",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="round",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("done", "Done"),
                    ("failed", "Failed"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.RunPython(arena_rounds, job_statuses_back),
    ]
