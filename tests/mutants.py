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
    area: str  # lease, judgment, snapshot, quality, scoping, runs, workspace
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    survives_on_purpose: str = ""  # why, when a survivor is accepted


SERVICES = "annotation/services.py"
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

MUTANTS: list[Mutant] = [
    # --- lease ---------------------------------------------------------------------------------
    Mutant(
        "lease insert re-count dropped",
        "lease",
        SERVICES,
        'if not sql.insert(\n                    assignment, where=f"{taken} < %s", params=[task.pk, *params, task.required]\n                ):',
        "if not sql.insert(assignment):",
        (LEASING,),
    ),
    Mutant(
        "heartbeat renews an expired lease whose slot was taken",
        "lease",
        SERVICES,
        "    if assignment.expires_at <= now and not _slot_still_free(assignment, now):\n        raise LeaseError(",
        "    if False:\n        raise LeaseError(",
        (LEASING, WORKSPACE),
    ),
    Mutant(
        "late submit accepted on a slot another labeler took",
        "lease",
        SERVICES,
        "    if assignment.expires_at <= now and not _slot_still_free(assignment, now):\n        Assignment.objects",
        "    if False:\n        Assignment.objects",
        (LEASING, WORKSPACE),
    ),
    Mutant(
        "claim forgets 'never assigned to this labeler'",
        "lease",
        SERVICES,
        'f" AND NOT EXISTS (SELECT 1 FROM {sql.table(Assignment)} o"\n        f" WHERE o.task_id = {alias}.id AND o.labeler_id = %s)"',
        'f" AND (%s IS NOT NULL)"',
        (LEASING,),
    ),
    Mutant(
        "per-labeler shuffle of the responses removed",
        "lease",
        SERVICES,
        '    random.Random(f"{task.pk}:{labeler.pk}").shuffle(ids)\n',
        "",
        (LEASING, WORKSPACE),
    ),
    Mutant(
        "an expired lease still counts as live",
        "lease",
        SERVICES,
        'f"({alias}.state = %s AND {alias}.expires_at > %s)"',
        'f"({alias}.state = %s AND {alias}.expires_at IS NOT NULL AND %s IS NOT NULL)"',
        (LEASING,),
    ),
    Mutant(
        "a submitted judgment no longer holds its slot",
        "lease",
        SERVICES,
        'return f"({alias}.state = %s OR {live})"',
        'return f"(({alias}.state = %s AND 1 = 0) OR {live})"',
        (LEASING,),
    ),
    Mutant(
        "a skip keeps the lease active",
        "lease",
        SERVICES,
        "assignment.state = Assignment.State.SKIPPED",
        "assignment.state = Assignment.State.ACTIVE",
        (LEASING, WORKSPACE, API),
    ),
    Mutant(
        "leases_expire expires the live leases",
        "lease",
        SERVICES,
        "filter(state=Assignment.State.ACTIVE, expires_at__lte=now)",
        "filter(state=Assignment.State.ACTIVE, expires_at__gte=now)",
        (LEASING,),
    ),
    Mutant(
        "the last judgment does not close the item",
        "lease",
        SERVICES,
        '" status = CASE WHEN done >= required - 1 THEN %s ELSE status END WHERE id = %s"',
        '" status = CASE WHEN done >= required THEN %s ELSE status END WHERE id = %s"',
        (LEASING, API),
    ),
    Mutant(
        "a double submit is refused instead of answered with the first",
        "lease",
        SERVICES,
        "    if assignment.state == Assignment.State.SUBMITTED:\n        first =",
        "    if False:\n        first =",
        (API, WORKSPACE),
    ),
    # --- judgment validation and votes ----------------------------------------------------------
    Mutant(
        "a ranking may leave responses out",
        "judgment",
        SERVICES,
        "if sorted(seen) != sorted(ids):",
        "if not set(seen) <= set(ids):",
        (JUDGMENT,),
    ),
    Mutant(
        "a comparison's winner may be any id",
        "judgment",
        SERVICES,
        "if winner not in ids:",
        "if not isinstance(winner, int):",
        (JUDGMENT,),
    ),
    Mutant(
        "a comparison's strength unchecked",
        "judgment",
        SERVICES,
        "if strength not in COMPARE_STRENGTHS:",
        "if not isinstance(strength, int):",
        (JUDGMENT,),
    ),
    Mutant(
        "a rating of 8 accepted",
        "judgment",
        SERVICES,
        "not low <= score <= high:",
        "not low <= score <= high + 1:",
        (JUDGMENT,),
    ),
    Mutant(
        "unknown rating flags accepted",
        "judgment",
        SERVICES,
        "any(f not in RATING_FLAGS for f in flags)",
        "any(not isinstance(f, str) for f in flags)",
        (JUDGMENT,),
    ),
    Mutant(
        "a written conversation may end on the assistant's turn",
        "judgment",
        SERVICES,
        'if messages[-1]["role"] != "user":',
        'if messages[-1]["role"] == "system":',
        (JUDGMENT,),
    ),
    Mutant(
        "a ranking's votes point the wrong way",
        "judgment",
        ROWS,
        "return [(order[i], order[j], 1) for i, j in _ordered_pairs(len(order))]",
        "return [(order[j], order[i], 1) for i, j in _ordered_pairs(len(order))]",
        (SNAPSHOT, QUALITY),
    ),
    Mutant(
        "tied responses vote as if ranked",
        "judgment",
        ROWS,
        "votes.append((min(a, b), max(a, b), 0))",
        "votes.append((min(a, b), max(a, b), 1))",
        (SNAPSHOT,),
    ),
    Mutant(
        "'all unacceptable' rankings still vote",
        "judgment",
        ROWS,
        'if kind != TaskKind.RANK or payload.get("all_unacceptable"):',
        "if kind != TaskKind.RANK:",
        (SNAPSHOT,),
    ),
    Mutant(
        "a comparison's strength ignored",
        "judgment",
        ROWS,
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
        (SNAPSHOT,),
    ),
    Mutant(
        "a pair whose votes cancel is kept",
        "judgment",
        ROWS,
        "            if total == 0:\n                self.ties += 1\n                continue",
        "            if total == 0 and count > 99:\n                self.ties += 1\n                continue",
        (SNAPSHOT,),
    ),
    Mutant(
        "min_agreement ignored",
        "judgment",
        ROWS,
        "if agreeing / count < min_agreement:",
        "if agreeing / count < 0:",
        (SNAPSHOT,),
    ),
    # --- snapshot rows and filters --------------------------------------------------------------
    Mutant(
        "superseded judgments enter the dataset",
        "snapshot",
        ROWS,
        "qs = Annotation.objects.filter(not_superseded(), task__project=project)",
        "qs = Annotation.objects.filter(task__project=project)",
        (SNAPSHOT,),
    ),
    Mutant(
        "rejected judgments enter the dataset",
        "snapshot",
        ROWS,
        "        qs = qs.exclude(review_status=ReviewStatus.REJECTED)\n",
        "        qs = qs.all()\n",
        (SNAPSHOT,),
    ),
    Mutant(
        "filter review=approved ignored",
        "snapshot",
        ROWS,
        "qs = qs.filter(review_status=ReviewStatus.APPROVED)",
        "qs = qs.exclude(review_status=ReviewStatus.REJECTED)",
        (SNAPSHOT,),
    ),
    Mutant(
        "filter source ignored",
        "snapshot",
        ROWS,
        'qs = qs.filter(source=filters["source"])',
        "qs = qs.all()",
        (SNAPSHOT,),
    ),
    Mutant(
        "filter guideline_version_min off by one",
        "snapshot",
        ROWS,
        'qs = qs.filter(guideline_version__gte=filters["guideline_version_min"])',
        'qs = qs.filter(guideline_version__gt=filters["guideline_version_min"])',
        (SNAPSHOT,),
    ),
    Mutant(
        "re-import key includes the line number",
        "snapshot",
        "annotation/imports/service.py",
        '        data.pop("line")\n',
        "",
        ("tests/annotation/test_import.py",),
    ),
    # --- quality --------------------------------------------------------------------------------
    Mutant(
        "weighted consensus ignores the weights",
        "quality",
        "annotation/quality.py",
        "weight = weights.get(labeler, 1.0)",
        "weight = 1.0",
        (QUALITY,),
    ),
    Mutant(
        "leave-one-out agreement counts split majorities",
        "quality",
        "annotation/quality.py",
        "if list(others.values()).count(count) == 1:",
        "if True:",
        (QUALITY,),
    ),
    # --- scoping --------------------------------------------------------------------------------
    Mutant(
        "projects_for ignores membership",
        "scoping",
        "annotation/selectors.py",
        "return Project.objects.filter(pk__in=RawSQL(*_member_of(user, roles)))",
        "return Project.objects.all()",
        (SWEEP, API),
    ),
    Mutant(
        "project_get and task_get ignore membership",
        "scoping",
        "annotation/selectors.py",
        "    if not user.is_superuser:\n        member, member_params",
        "    if False:\n        member, member_params",
        (SWEEP, WORKSPACE),
    ),
    Mutant(
        "roles ignored in membership checks",
        "scoping",
        "annotation/selectors.py",
        "    if roles:\n        statement +=",
        "    if False:\n        statement +=",
        (SWEEP, PERMISSIONS),
    ),
    Mutant(
        "a labeler may read /api/v1/quality/<project>/",
        "scoping",
        "annotation/api_data.py",
        "project = _project_for(request.user, pk, SNAPSHOT_ROLES)",
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
        "        return queryset.filter(**{lookup: self.staff_projects(request)})",
        "        return queryset",
        (SWEEP,),
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
        "class ProjectScopedAdmin(ScopedChoicesMixin, admin.ModelAdmin):",
        "class ProjectScopedAdmin(admin.ModelAdmin):",
        (SWEEP,),
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
    # --- runs -----------------------------------------------------------------------------------
    Mutant(
        "resume starts from scratch",
        "runs",
        "training/services.py",
        'config = {**run.config, "resume": True}',
        'config = {**run.config, "resume": False}',
        (RUNS,),
    ),
    Mutant(
        "the admin's 'Resume selected runs' re-runs",
        "runs",
        "training/admin.py",
        'self._each(request, queryset, services.run_resume, "resumed")',
        'self._each(request, queryset, services.run_rerun, "resumed")',
        (RUNS,),
    ),
    Mutant(
        "a succeeded run can be resumed",
        "runs",
        "training/services.py",
        "    if not run.can_resume:\n",
        "    if False:\n",
        (RUNS,),
    ),
    Mutant(
        "a run can be resumed twice at once",
        "runs",
        "training/services.py",
        "if run.resumed_by.exclude(status__in=TrainingRun.FINISHED).exists():",
        "if False:",
        (RUNS,),
    ),
    Mutant(
        "a resumed run copies the points past its checkpoint",
        "runs",
        "training/services.py",
        "for p in run.points.filter(step__lte=run.checkpoint_step)",
        "for p in run.points.all()",
        (RUNS,),
    ),
    Mutant(
        "a run is claimed whatever its status",
        "runs",
        "training/services.py",
        "claimed = TrainingRun.objects.filter(pk=run_id, status=Status.QUEUED).update(",
        "claimed = TrainingRun.objects.filter(pk=run_id).update(",
        (RUNS,),
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
