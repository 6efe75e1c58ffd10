"""Demo accounts and a demo project, so a fresh `make run` has something to label."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from annotation import services
from annotation.models import Project, Role, Source, TaskKind

DEMO_PASSWORD_SUFFIX = "-demo-pass"
DEMO_USERS = [
    # username, role, is_staff, is_superuser
    ("admin", Role.ADMIN, True, True),
    ("curator", Role.CURATOR, True, False),
    ("engineer", Role.ENGINEER, True, False),
    ("labeler1", Role.LABELER, False, False),
    ("labeler2", Role.LABELER, False, False),
]

DEMO_GUIDELINES = """# How to judge responses

1. **Correct** answers beat wrong ones, whatever the style.
2. Among correct answers, prefer **helpful, on-topic and polite** ones.
3. Prefer **concise** answers: no padding, no repetition.
4. Flag anything harmful, made up, or containing personal data.
"""

DEMO_PROMPTS = [
    (
        "What is 7 plus 5?",
        ["12.", "7 plus 5 is 12.", "It is 13.", "Go away, you can count yourself."],
    ),
    (
        "Name a fruit that is red.",
        ["A strawberry.", "Bananas are red.", "Cherries are red fruit.", "Red."],
    ),
    (
        "Say hello politely.",
        [
            "Hello! How can I help you today?",
            "What do you want?",
            "Hi.",
            "Hello, hello, hello, hello.",
        ],
    ),
    (
        "What colour is the sky on a clear day?",
        ["Blue.", "The sky is blue on a clear day.", "Green.", "Why do you ask?"],
    ),
    ("What is 9 minus 4?", ["5.", "9 minus 4 is 5.", "It is 6.", "Numbers are boring."]),
    (
        "Name an animal that can fly.",
        ["A sparrow.", "Birds such as eagles can fly.", "A cow.", "Flying is for planes."],
    ),
]


def demo_password(username: str) -> str:
    return f"{username}{DEMO_PASSWORD_SUFFIX}"


@transaction.atomic
def demo_seed() -> dict:
    """Create (or reuse) the demo accounts and project. Idempotent."""
    User = get_user_model()
    users = {}
    for username, role, is_staff, is_superuser in DEMO_USERS:
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": is_staff, "is_superuser": is_superuser}
        )
        if created:
            user.set_password(demo_password(username))
            user.save()
        users[username] = (user, role)

    project = Project.objects.filter(slug="demo").first()
    if project is None:
        project = services.project_create(
            name="Demo: helpful assistant",
            slug="demo",
            k_responses=4,
            overlap=2,
            guidelines=DEMO_GUIDELINES,
            description="A small project to try every task type.",
        )
        for prompt_text, answers in DEMO_PROMPTS:
            (prompt,), _ = services.prompts_create(
                project=project, items=[{"text": prompt_text, "tags": ["demo"]}]
            )
            responses = [
                services.response_create(prompt=prompt, text=a, origin=Source.SEED) for a in answers
            ]
            services.task_create(
                project=project, kind=TaskKind.RANK, prompt=prompt, candidates=responses
            )
            services.task_create(
                project=project, kind=TaskKind.COMPARE, prompt=prompt, candidates=responses[:2]
            )
            services.task_create(
                project=project, kind=TaskKind.RATE, prompt=prompt, candidates=responses[2:3]
            )
            services.task_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
        services.task_create(project=project, kind=TaskKind.WRITE_PROMPT, required=2)
    for user, role in users.values():
        if not project.memberships.filter(user=user).exists():
            services.membership_set(project=project, user=user, role=role)
    return {"project": project, "users": {name: u for name, (u, _) in users.items()}}
