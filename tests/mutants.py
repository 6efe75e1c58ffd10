"""The catalogue of `make mutate`: deliberate mistakes in the core rules, each with the tests
that must catch it. See tests/mutate.py for how they run and docs/mutations.md for the figures.

A mutant's `old` text must occur exactly once in its file; when the code changes under it, the
run stops and names the mutant, so the catalogue is kept in step with the code. Add one when you
add a rule: the mistake a careless edit would make, and the test that catches it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str  # lease, judgment, snapshot, quality, scoping, runs, jobs, workspace
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    survives_on_purpose: str = ""  # why, when a survivor is accepted
    backend: str = ""  # "postgresql": only a real concurrent database can show the mistake


SERVICES = "annotation/services.py"
RULES = "annotation/rules.py"
LEASES = "annotation/leasing.py"
SQL = "annotation/sql.py"
ROWS = "annotation/exports/rows.py"
LEASING = "tests/annotation/test_leasing.py"
WORKSPACE = "tests/web/test_workspace.py"
SNAPSHOT = "tests/annotation/test_snapshot.py"
API = "tests/web/test_api.py"
PERMISSIONS = "tests/web/test_permissions.py"
SWEEP = "tests/web/test_authorization_sweep.py"
RUNS = "tests/training/test_runs.py"
QUALITY = "tests/annotation/test_quality.py"
JUDGMENT = "tests/web/test_judgment_rules.py"
ADMIN_WRITES = "tests/annotation/test_admin_writes.py"

MUTANTS: list[Mutant] = [
    # --- lease ---------------------------------------------------------------------------------
    Mutant(
        "lease insert re-count dropped",
        "lease",
        LEASES,
        "if not sql.insert(assignment, where=sql.slot_free(task=task, now=now)):",
        "if not sql.insert(assignment):",
        (
            "tests/annotation/test_leasing.py::test_a_lease_committed_after_the_claim_read_its_slots_is_counted_by_the_insert",
        ),
        backend="postgresql",
    ),
    Mutant(
        "heartbeat renews an expired lease whose slot was taken",
        "lease",
        LEASES,
        "    if assignment.expires_at <= now and not slot_still_free(assignment=assignment, now=now):\n        raise LeaseError(",
        "    if False:\n        raise LeaseError(",
        (
            "tests/web/test_workspace.py::test_the_heartbeat_refuses_a_lapsed_lease_whose_slot_another_labeler_took",
        ),
    ),
    Mutant(
        "late submit accepted on a slot another labeler took",
        "lease",
        SERVICES,
        "    if assignment.expires_at <= now and not slot_still_free(assignment=assignment, now=now):\n        refused = _refused(",
        "    if False:\n        refused = _refused(",
        (
            "tests/web/test_workspace.py::test_a_lost_lease_shows_the_draft_and_the_next_task",
            "tests/annotation/test_leasing.py::test_it_gives_an_expired_slot_back",
        ),
    ),
    Mutant(
        "claim forgets 'never assigned to this labeler'",
        "lease",
        SQL,
        'f" AND NOT EXISTS (SELECT 1 FROM {table(Assignment)} o"\n        f" WHERE o.task_id = {alias}.id AND o.labeler_id = %(labeler)s)"',
        '""',
        ("tests/annotation/test_leasing.py::test_it_never_leases_a_task_twice_to_one_labeler",),
    ),
    Mutant(
        "per-labeler shuffle of the responses removed",
        "lease",
        LEASES,
        '    random.Random(f"{task.pk}:{labeler.pk}").shuffle(ids)\n',
        "",
        (
            "tests/web/test_workspace.py::test_each_labeler_sees_the_candidates_in_their_own_order_and_it_is_stored",
        ),
    ),
    Mutant(
        "an expired lease still counts as live",
        "lease",
        SQL,
        'f"({alias}.state = %(active)s AND {alias}.expires_at > %(now)s)"',
        'f"({alias}.state = %(active)s)"',
        (
            "tests/annotation/test_leasing.py::test_it_gives_an_expired_slot_back",
            "tests/annotation/test_leasing.py::test_a_lease_ends_at_the_instant_it_expires",
        ),
    ),
    Mutant(
        "a submitted judgment no longer holds its slot",
        "lease",
        SQL,
        'return f"({alias}.state = %(submitted)s OR {_live_lease(alias)})"',
        'return f"({_live_lease(alias)})"',
        ("tests/annotation/test_leasing.py::test_a_submitted_judgment_keeps_its_slot",),
    ),
    Mutant(
        "a skip keeps the lease active",
        "lease",
        LEASES,
        "assignment.state = Assignment.State.SKIPPED",
        "assignment.state = Assignment.State.ACTIVE",
        (
            "tests/annotation/test_leasing.py::test_it_returns_a_skipped_slot_to_the_queue",
            "tests/web/test_workspace.py::test_skip_needs_a_reason_and_then_gives_the_next_task",
        ),
    ),
    Mutant(
        "leases_expire expires the live leases",
        "lease",
        LEASES,
        "filter(state=Assignment.State.ACTIVE, expires_at__lte=now)",
        "filter(state=Assignment.State.ACTIVE, expires_at__gte=now)",
        ("tests/annotation/test_leasing.py::test_a_lease_ends_at_the_instant_it_expires",),
    ),
    Mutant(
        "the last judgment does not close the item",
        "lease",
        SQL,
        '" status = CASE WHEN done >= required - 1 THEN %(complete)s ELSE status END"',
        '" status = CASE WHEN done >= required THEN %(complete)s ELSE status END"',
        (
            "tests/annotation/test_leasing.py::test_it_keeps_the_invariant_under_concurrent_labelers",
            API,
        ),
    ),
    Mutant(
        "a double submit is refused instead of answered with the first",
        "lease",
        SERVICES,
        "    if assignment.state == Assignment.State.SUBMITTED:\n        first =",
        "    if False:\n        first =",
        (API, WORKSPACE),
    ),
    Mutant(
        "started items no longer come first",
        "lease",
        SQL,
        'f" ORDER BY {taken} DESC, c.priority DESC, c.id LIMIT 1{lock}),"',
        'f" ORDER BY {taken}, c.priority DESC, c.id LIMIT 1{lock}),"',
        ("tests/annotation/test_leasing.py::test_the_item_with_most_slots_taken_comes_first",),
    ),
    Mutant(
        "the top priority is not served first",
        "lease",
        SQL,
        '" FROM {tasks} f WHERE {top} ORDER BY f.priority DESC LIMIT 1)"',
        '" FROM {tasks} f WHERE {top} ORDER BY f.priority LIMIT 1)"',
        (
            "tests/annotation/test_leasing.py::test_a_higher_priority_comes_first_among_fresh_and_started_items",
        ),
    ),
    Mutant(
        "a live lease is handed back in any project",
        "lease",
        SQL,
        '" WHERE l.labeler_id = %(labeler)s AND lt.project_id = %(project)s AND {live}"',
        '" WHERE l.labeler_id = %(labeler)s AND {live}"',
        (
            "tests/annotation/test_leasing.py::test_a_live_lease_is_handed_back_only_in_its_own_project",
        ),
    ),
    Mutant(
        "closed items are leased",
        "lease",
        SQL,
        'f"{alias}.project_id = %(project)s AND {alias}.status = %(open)s"',
        'f"{alias}.project_id = %(project)s"',
        ("tests/annotation/test_leasing.py::test_a_disabled_item_or_kind_is_never_leased",),
    ),
    Mutant(
        "the judgment records the ids in id order, not the order shown",
        "lease",
        SERVICES,
        "        shown_order=assignment.shown_order,\n        time_spent_ms",
        "        shown_order=candidate_ids,\n        time_spent_ms",
        (
            "tests/web/test_workspace.py::test_each_labeler_sees_the_candidates_in_their_own_order_and_it_is_stored",
        ),
    ),
    # --- judgment validation and votes ----------------------------------------------------------
    Mutant(
        "a ranking may leave responses out",
        "judgment",
        RULES,
        "if not ranking or sorted(seen) != sorted(ids):",
        "if not ranking or not set(seen) <= set(ids):",
        (JUDGMENT,),
    ),
    Mutant(
        "a comparison's winner may be any id",
        "judgment",
        RULES,
        "if winner not in ids:",
        "if not isinstance(winner, int):",
        (JUDGMENT,),
    ),
    Mutant(
        "a comparison's strength unchecked",
        "judgment",
        RULES,
        "if isinstance(strength, bool) or strength not in strengths:",
        "if not isinstance(strength, int):",
        (JUDGMENT,),
    ),
    Mutant(
        "a rating of 8 accepted",
        "judgment",
        RULES,
        "not low <= score <= high:",
        "not low <= score <= high + 1:",
        (JUDGMENT,),
    ),
    Mutant(
        "unknown rating flags accepted",
        "judgment",
        RULES,
        "any(not isinstance(f, str) or f not in known for f in flags)",
        "any(not isinstance(f, str) for f in flags)",
        (JUDGMENT,),
    ),
    Mutant(
        "a written conversation may end on the assistant's turn",
        "judgment",
        RULES,
        'if messages[-1]["role"] != "user":',
        'if messages[-1]["role"] == "system":',
        (JUDGMENT,),
    ),
    Mutant(
        "a ranking's votes point the wrong way",
        "judgment",
        RULES,
        "return [(order[i], order[j], 1) for i, j in _ordered_pairs(len(order))]",
        "return [(order[j], order[i], 1) for i, j in _ordered_pairs(len(order))]",
        (SNAPSHOT, QUALITY),
    ),
    Mutant(
        "tied responses vote as if ranked",
        "judgment",
        RULES,
        "votes.append((min(a, b), max(a, b), 0))",
        "votes.append((min(a, b), max(a, b), 1))",
        (
            SNAPSHOT,
            "tests/annotation/test_snapshot_bytes.py::test_it_writes_the_pinned_bytes_and_hash",
        ),
    ),
    Mutant(
        "'all unacceptable' rankings still vote",
        "judgment",
        RULES,
        '    if payload.get("all_unacceptable"):\n        return []',
        "    if False:\n        return []",
        (SNAPSHOT,),
    ),
    Mutant(
        "a comparison's strength ignored",
        "judgment",
        RULES,
        'int(payload.get("strength") or 1)',
        "1",
        (SNAPSHOT,),
    ),
    Mutant(
        "agreement counts the votes against the chosen side",
        "judgment",
        ROWS,
        "tally[2] += sign > 0",
        "tally[2] += sign >= 0",
        (
            SNAPSHOT,
            "tests/annotation/test_snapshot_bytes.py::test_it_writes_the_pinned_bytes_and_hash",
        ),
    ),
    Mutant(
        "a pair whose votes cancel is kept",
        "judgment",
        ROWS,
        "            if total == 0:\n                self.ties += 1\n                continue",
        "            if total == 0 and count > 99:\n                self.ties += 1\n                continue",
        (
            SNAPSHOT,
            "tests/annotation/test_snapshot_bytes.py::test_it_writes_the_pinned_bytes_and_hash",
        ),
    ),
    Mutant(
        "min_agreement ignored",
        "judgment",
        ROWS,
        "if agreeing / count < min_agreement:",
        "if agreeing / count < 0:",
        (
            "tests/annotation/test_snapshot.py::test_min_agreement_keeps_a_pair_whose_agreement_equals_it",
        ),
    ),
    # --- snapshot rows and filters --------------------------------------------------------------
    Mutant(
        "superseded judgments count",
        "snapshot",
        RULES,
        "return judgments.filter(not_superseded()).exclude(",
        "return judgments.exclude(",
        (
            SNAPSHOT,
            "tests/annotation/test_quality.py::test_consensus_counts_no_rejected_superseded_or_tied_judgment",
        ),
    ),
    Mutant(
        "rejected judgments count",
        "snapshot",
        RULES,
        "return judgments.filter(not_superseded()).exclude(review_status=ReviewStatus.REJECTED)",
        "return judgments.filter(not_superseded())",
        (
            "tests/annotation/test_snapshot.py::test_the_review_source_and_guideline_filters_pick_exactly_their_judgments",
            "tests/annotation/test_snapshot.py::test_it_never_exports_rejected_superseded_or_all_unacceptable_work",
            "tests/annotation/test_quality.py::test_consensus_counts_no_rejected_superseded_or_tied_judgment",
        ),
    ),
    Mutant(
        "filter review=approved ignored",
        "snapshot",
        ROWS,
        "qs = qs.filter(review_status=ReviewStatus.APPROVED)",
        "qs = qs.exclude(review_status=ReviewStatus.REJECTED)",
        (
            "tests/annotation/test_snapshot.py::test_the_review_source_and_guideline_filters_pick_exactly_their_judgments",
        ),
    ),
    Mutant(
        "filter source ignored",
        "snapshot",
        ROWS,
        'qs = qs.filter(source=filters["source"])',
        "qs = qs.all()",
        (
            "tests/annotation/test_snapshot.py::test_the_review_source_and_guideline_filters_pick_exactly_their_judgments",
        ),
    ),
    Mutant(
        "filter guideline_version_min off by one",
        "snapshot",
        ROWS,
        'qs = qs.filter(guideline_version__gte=filters["guideline_version_min"])',
        'qs = qs.filter(guideline_version__gt=filters["guideline_version_min"])',
        (
            "tests/annotation/test_snapshot.py::test_the_review_source_and_guideline_filters_pick_exactly_their_judgments",
        ),
    ),
    Mutant(
        "an imported judgment is stored as the file gave it, unchecked",
        "snapshot",
        SERVICES,
        '            payload = validate_payload(task, judgment["payload"], candidate_ids=ids)',
        '            payload = judgment["payload"]',
        (
            "tests/annotation/test_import.py::test_imported_rows_are_written_through_the_services_and_checked_as_they_check",
        ),
    ),
    Mutant(
        "re-import key includes the line number",
        "snapshot",
        "annotation/imports/service.py",
        '        data.pop("line")\n',
        "",
        (
            "tests/annotation/test_import.py::test_it_adds_only_the_new_record_when_a_file_comes_back_reordered",
        ),
    ),
    Mutant(
        "held-out share off by a factor of 16",
        "snapshot",
        "annotation/exports/snapshots.py",
        "int(share * 16**16), 16**16 - 1)",
        "int(share * 16**15), 16**16 - 1)",
        (
            "tests/annotation/test_snapshot.py::test_a_prompt_never_changes_side_as_the_project_grows",
        ),
    ),
    Mutant(
        "import_data --dry-run writes",
        "snapshot",
        "annotation/management/commands/import_data.py",
        'dry_run=options["dry_run"],',
        "dry_run=False,",
        (
            "tests/annotation/test_import.py::test_the_command_dry_run_reports_counts_and_writes_nothing",
        ),
    ),
    Mutant(
        "snapshot --format ignored",
        "snapshot",
        "annotation/management/commands/snapshot.py",
        'format=options["format"],',
        'format="jsonl",',
        (
            "tests/annotation/test_snapshot.py::test_the_command_writes_parquet_and_hf_with_the_rows_of_jsonl",
        ),
    ),
    # --- quality --------------------------------------------------------------------------------
    Mutant(
        "weighted consensus ignores the weights",
        "quality",
        "annotation/quality.py",
        "weight = weights.get(labeler, 1.0)",
        "weight = 1.0",
        (
            "tests/annotation/test_quality.py::test_weighted_consensus_trusts_the_labelers_who_agree_with_the_others",
        ),
    ),
    Mutant(
        "agreement with consensus counts split majorities",
        "quality",
        RULES,
        "    if len(top) > 1 and top[0][1] == top[1][1]:\n        return None",
        "    if False:\n        return None",
        (QUALITY,),
    ),
    Mutant(
        "agreement with consensus of a single other labeler",
        "quality",
        RULES,
        "if len(others) < CONSENSUS_MIN_OTHERS:",
        "if not others:",
        (QUALITY, WORKSPACE),
    ),
    Mutant(
        "consensus counts ties as wins",
        "quality",
        "annotation/quality.py",
        "            if strength:\n",
        "            if True:\n",
        (
            "tests/annotation/test_quality.py::test_consensus_counts_no_rejected_superseded_or_tied_judgment",
        ),
    ),
    # --- scoping --------------------------------------------------------------------------------
    Mutant(
        "projects_for ignores membership",
        "scoping",
        "annotation/selectors.py",
        "return Project.objects.filter(pk__in=RawSQL(*scope))",
        "return Project.objects.all()",
        (SWEEP, API),
    ),
    Mutant(
        "project_get and task_get ignore membership",
        "scoping",
        SQL,
        "    if within is not None:\n        statement +=",
        "    if False:\n        statement +=",
        (SWEEP, WORKSPACE),
    ),
    Mutant(
        "roles ignored in membership checks",
        "scoping",
        SQL,
        "    if roles:\n        statement +=",
        "    if False:\n        statement +=",
        (SWEEP, PERMISSIONS),
    ),
    Mutant(
        "a labeler may read /api/v1/quality/<project>/",
        "scoping",
        "annotation/api_data.py",
        "project = _project_for(request.user, pk, SNAPSHOT_ROLE)",
        "project = selectors.projects_for(request.user).get(pk=pk)",
        (SWEEP, PERMISSIONS),
    ),
    Mutant(
        "admin approve/reject act on the posted ids",
        "scoping",
        "annotation/admin.py",
        "        for annotation in queryset:\n            services.annotation_review(",
        '        for annotation in queryset.model.objects.filter(pk__in=request.POST.getlist("_selected_action")):\n            services.annotation_review(',
        (SWEEP, PERMISSIONS),
    ),
    Mutant(
        "annotation admin unscoped",
        "scoping",
        "annotation/admin.py",
        "        return queryset.filter(condition)",
        "        return queryset",
        (SWEEP, "tests/web/test_admin_isolation.py"),
    ),
    Mutant(
        "/training/artifacts/<id>/generate/ unscoped",
        "scoping",
        "training/views.py",
        "artifact = get_object_or_404(selectors.artifacts_for(request.user), pk=pk)",
        "artifact = get_object_or_404(selectors.artifacts_for(request.user).model.objects, pk=pk)",
        (SWEEP,),
    ),
    Mutant(
        "run pages unscoped",
        "scoping",
        "training/selectors.py",
        'runs_for(user).select_related("parent_artifact", "reward_artifact", "resume_of"), pk=pk',
        'TrainingRun.objects.select_related("parent_artifact", "reward_artifact", "resume_of"), pk=pk',
        (SWEEP,),
    ),
    Mutant(
        "runs_for returns every project's runs",
        "scoping",
        "training/selectors.py",
        "return TrainingRun.objects.filter(Q(project__in=projects) | Q(created_by=user))",
        "return TrainingRun.objects.all()",
        (SWEEP, RUNS),
    ),
    Mutant(
        "admin relation fields offer every project's rows",
        "scoping",
        "annotation/admin.py",
        "class RoleScopedAdmin(ScopedChoicesMixin, admin.ModelAdmin):",
        "class RoleScopedAdmin(admin.ModelAdmin):",
        (SWEEP,),
    ),
    Mutant(
        "an admin action acts on selected rows of projects where the role is lower",
        "scoping",
        "annotation/admin.py",
        "        return func(modeladmin, request, allowed)",
        "        return func(modeladmin, request, queryset)",
        ("tests/web/test_admin_isolation.py",),
    ),
    Mutant(
        "a user keeps the staff flag after their last staff role",
        "scoping",
        "annotation/roles.py",
        "    if not user.is_superuser and user.is_staff != staff:",
        "    if not user.is_superuser and staff and not user.is_staff:",
        ("tests/web/test_admin_isolation.py",),
    ),
    Mutant(
        "a raw id box names rows of other projects",
        "scoping",
        "annotation/admin.py",
        'return super().label_and_url_for_value(value) if visible else ("", "")',
        "return super().label_and_url_for_value(value)",
        (SWEEP,),
    ),
    Mutant(
        "run page actions unscoped",
        "scoping",
        "training/views.py",
        "    run = selectors.run_get(request.user, pk)\n    try:",
        "    run = selectors.TrainingRun.objects.get(pk=pk)\n    try:",
        (SWEEP,),
    ),
    Mutant(
        "a membership saved in the admin skips the role sync",
        "scoping",
        "annotation/admin.py",
        "        _membership_save(obj, form.changed_data if change else [])",
        "        obj.save()",
        ("tests/web/test_membership_admin.py",),
    ),
    Mutant(
        "a prompt added in the admin skips the prompt service's checks",
        "scoping",
        "annotation/admin.py",
        "                services.prompt_check(prompt=probe, item=_prompt_item(cleaned))",
        "                pass",
        (ADMIN_WRITES,),
    ),
    Mutant(
        "a task changed in the admin may require fewer judgments than are in",
        "scoping",
        SERVICES,
        "    if required < max(1, done):",
        "    if required < 1:",
        (ADMIN_WRITES,),
    ),
    # --- runs -----------------------------------------------------------------------------------
    Mutant(
        "resume starts from scratch",
        "runs",
        "training/runs.py",
        'config = {**run.config, "resume": True}',
        'config = {**run.config, "resume": False}',
        (
            "tests/training/test_run_admin.py::test_the_admin_resumes_a_stopped_run_from_its_checkpoint_and_reruns_it_from_scratch",
        ),
    ),
    Mutant(
        "the admin's 'Resume selected runs' re-runs",
        "runs",
        "training/admin.py",
        'self._each(request, queryset, runs.run_resume, "resumed")',
        'self._each(request, queryset, runs.run_rerun, "resumed")',
        (
            "tests/training/test_run_admin.py::test_the_admin_resumes_a_stopped_run_from_its_checkpoint_and_reruns_it_from_scratch",
        ),
    ),
    Mutant(
        "a succeeded run can be resumed",
        "runs",
        "training/runs.py",
        "    if not run.can_resume:\n",
        "    if False:\n",
        ("tests/training/test_run_admin.py::test_the_admin_resumes_and_reruns_the_selected_runs",),
    ),
    Mutant(
        "a run can be resumed twice at once",
        "runs",
        "training/runs.py",
        "if run.resumed_by.exclude(status__in=TrainingRun.FINISHED).exists():",
        "if False:",
        (RUNS,),
    ),
    Mutant(
        "a resumed run copies the points past its checkpoint",
        "runs",
        "training/runs.py",
        "for p in run.points.filter(step__lte=run.checkpoint_step)",
        "for p in run.points.all()",
        (RUNS,),
    ),
    Mutant(
        "a job is claimed whatever its status",
        "jobs",
        "platform/core/jobs.py",
        "claimed = model.objects.filter(pk=pk, status=model.QUEUED).update(",
        "claimed = model.objects.filter(pk=pk).update(",
        ("tests/training/test_runs.py::test_it_claims_a_run_once", SNAPSHOT),
    ),
    Mutant(
        "the admin's 'Re-run selected runs' resumes",
        "runs",
        "training/admin.py",
        'self._each(request, queryset, runs.run_rerun, "re-queued")',
        'self._each(request, queryset, runs.run_resume, "re-queued")',
        (
            "tests/training/test_run_admin.py::test_the_admin_resumes_a_stopped_run_from_its_checkpoint_and_reruns_it_from_scratch",
        ),
    ),
    Mutant(
        "the admin's bulk cancel does nothing",
        "runs",
        "training/admin.py",
        'self._each(request, queryset, runs.run_cancel, "cancelled (or cancelling)")',
        "pass",
        ("tests/training/test_run_admin.py::test_the_admin_cancels_the_selected_runs",),
    ),
    Mutant(
        "the launch form drops PPO's reward model",
        "runs",
        "training/views.py",
        'reward=data["reward"]',
        "reward=None",
        (
            "tests/training/test_run_admin.py::test_it_launches_each_preset_from_the_form_it_prefills",
        ),
    ),
    # --- jobs (snapshot builds, runs, generation jobs: platform/core/jobs.py) -------------------
    Mutant(
        "a finished job is reused for a new identical request",
        "jobs",
        "platform/core/jobs.py",
        "unfinished = model.objects.filter(fingerprint=fingerprint, status__in=model.unfinished())",
        "unfinished = model.objects.filter(fingerprint=fingerprint)",
        (
            "tests/annotation/test_snapshot_jobs.py::test_the_same_request_while_unfinished_is_the_same_snapshot",
            "tests/training/test_runs.py::test_a_launch_submitted_twice_queues_one_run",
        ),
    ),
    Mutant(
        "two racing requests make two snapshots",
        "jobs",
        "annotation/migrations/0006_snapshot_job.py",
        'fields=("fingerprint",),',
        'fields=("fingerprint", "id"),',
        ("tests/annotation/test_snapshot_jobs.py::test_two_concurrent_requests_make_one_snapshot",),
        backend="postgresql",
    ),
    Mutant(
        "a snapshot build without heartbeat",
        "jobs",
        "annotation/exports/snapshots.py",
        "with job_heartbeat(Snapshot, snapshot.pk, worker=worker):",
        "if True:",
        (
            "tests/annotation/test_snapshot_jobs.py::test_a_build_keeps_its_heartbeat_fresh_while_it_writes",
        ),
    ),
    Mutant(
        "snapshots are never swept",
        "jobs",
        "annotation/apps.py",
        'job_kind_register(label="snapshots", model=Snapshot, task="annotation.tasks.snapshot_build")',
        "pass",
        (
            "tests/annotation/test_snapshot_jobs.py::test_a_snapshot_left_building_by_a_lost_worker_is_failed_with_what_to_do",
        ),
    ),
    Mutant(
        "the sweep takes a live job for a lost one",
        "jobs",
        "platform/core/jobs.py",
        "stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)",
        "stale = Q(heartbeat_at__lt=now) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)",
        (
            "tests/annotation/test_snapshot_jobs.py::test_a_snapshot_left_building_by_a_lost_worker_is_failed_with_what_to_do",
            "tests/training/test_runs.py::test_it_marks_a_run_with_a_stale_heartbeat_failed_with_advice",
        ),
    ),
    Mutant(
        "a lost run asked to cancel is failed",
        "jobs",
        "training/models.py",
        "if self.cancel_requested:  # it was stopping anyway: what was asked for happened",
        "if False:",
        (
            "tests/training/test_runs.py::test_it_marks_a_run_with_a_stale_heartbeat_failed_with_advice",
        ),
    ),
    # --- workspace (browser) --------------------------------------------------------------------
    Mutant(
        "compare keys a and b swapped",
        "workspace",
        "static/js/workspace.js",
        '{ a: "a", b: "b", t: "tie" }',
        '{ a: "b", b: "a", t: "tie" }',
        ("tests/browser/test_labeling.py::test_it_compares_pairs_with_the_keyboard_only",),
    ),
    Mutant(
        "rate keys do nothing",
        "workspace",
        "static/js/workspace.js",
        "      check('input[name=score][value=\"' + event.key + '\"]');\n",
        "",
        ("tests/browser/test_labeling.py::test_it_rates_with_the_keyboard",),
    ),
    Mutant(
        "an open task page stops renewing its lease",
        "workspace",
        "templates/annotation/_lease.html",
        ' hx-trigger="every {{ heartbeat_seconds }}s"',
        "",
        (
            "tests/browser/test_labeling.py::test_an_open_task_page_renews_its_lease_and_a_closed_one_stops",
        ),
    ),
]
