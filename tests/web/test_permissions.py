"""Object-level scoping: a labeler of project A gets 404 for every object of project B."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from annotation import leasing, services
from annotation.models import ReviewStatus, Role


@pytest.fixture
def two_projects(make_user, project_factory):
    owner_b, member_a = make_user("owner_b"), make_user("member_a")
    project_a = project_factory("alpha", members=[(member_a, Role.LABELER)])
    project_b = project_factory("beta", members=[(owner_b, Role.LABELER)])
    lease = leasing.next_task_for(project=project_b, labeler=owner_b)
    annotation, _ = services.annotation_submit(
        task=lease.task, labeler=owner_b, payload={"ranking": [[i] for i in lease.shown_order]}
    )
    return {
        "a": project_a,
        "b": project_b,
        "member_a": member_a,
        "owner_b": owner_b,
        "annotation_b": annotation,
    }


def test_a_member_of_a_gets_404_for_objects_of_b_through_the_api(two_projects):
    b, annotation = two_projects["b"], two_projects["annotation_b"]
    client = APIClient()
    client.force_authenticate(two_projects["member_a"])
    task_b = b.tasks.first()
    prompt_b = b.prompts.first()
    for url in [
        f"/api/v1/projects/{b.pk}/",
        f"/api/v1/prompts/{prompt_b.pk}/",
        f"/api/v1/tasks/{task_b.pk}/",
        f"/api/v1/tasks/{task_b.pk}/annotations/",
        f"/api/v1/annotations/{annotation.pk}/",
    ]:
        assert client.get(url).status_code == 404, url
    for url in [
        f"/api/v1/projects/{b.pk}/tasks/next/",
        f"/api/v1/tasks/{task_b.pk}/annotations/",
        f"/api/v1/tasks/{task_b.pk}/lease/",
        f"/api/v1/tasks/{task_b.pk}/skip/",
    ]:
        assert client.post(url, {"payload": {}}, format="json").status_code == 404, url
    assert (
        client.patch(f"/api/v1/projects/{b.pk}/", {"name": "pwned"}, format="json").status_code
        == 404
    )
    # Lists leak nothing of B.
    for url in ["/api/v1/projects/", "/api/v1/prompts/", "/api/v1/tasks/", "/api/v1/annotations/"]:
        ids = [row.get("project", row.get("id")) for row in client.get(url).json()["results"]]
        assert b.pk not in ids or url == "/api/v1/annotations/", url
    assert client.get(f"/api/v1/annotations/?project={b.pk}").json()["results"] == []


def test_a_member_of_a_gets_404_for_pages_of_b(client, two_projects):
    b = two_projects["b"]
    client.force_login(two_projects["member_a"])
    assert client.post(f"/projects/{b.slug}/next/").status_code == 404
    assert client.get(f"/tasks/{b.tasks.first().pk}/").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and b"Beta" not in page.content and b"Alpha" in page.content


def test_staff_of_a_see_only_a_in_the_admin(client, make_user, two_projects):
    curator = make_user("curator_a")
    services.membership_set(project=two_projects["a"], user=curator, role=Role.CURATOR)
    client.force_login(curator)
    listing = client.get("/admin/annotation/task/")
    assert listing.status_code == 200
    assert (
        f"/admin/annotation/task/{two_projects['b'].tasks.first().pk}/change/".encode()
        not in listing.content
    )
    assert (
        client.get(
            f"/admin/annotation/annotation/{two_projects['annotation_b'].pk}/change/"
        ).status_code
        == 302
    )  # "does not exist" → redirect to index
    labeler = two_projects["member_a"]
    client.force_login(labeler)
    assert client.get("/admin/annotation/task/").status_code == 302  # not staff: login page


def test_a_curator_of_a_cannot_review_a_judgment_of_b_through_the_admin_actions(
    client, make_user, two_projects
):
    """Kills mutation: annotation/admin.py AnnotationAdmin's approve/reject act on the posted ids
    rather than on the admin's queryset scoped to the curator's projects."""
    curator = make_user("curator_a")
    services.membership_set(project=two_projects["a"], user=curator, role=Role.CURATOR)
    client.force_login(curator)
    annotation = two_projects["annotation_b"]
    for action in ("approve", "reject"):
        response = client.post(
            "/admin/annotation/annotation/",
            {"action": action, "_selected_action": [annotation.pk], "index": 0},
        )
        assert response.status_code == 302, action  # back to the list, which B is not in
        annotation.refresh_from_db()
        assert (annotation.review_status, annotation.reviewed_by) == (ReviewStatus.PENDING, None)


def test_anonymous_users_are_sent_to_login(client, two_projects):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert client.get("/accounts/login/").status_code == 200
