"""The platform's plumbing: what every app uses and no app owns (login, middleware, API
authentication, the on-commit task queue, the job lifecycle, the worker command).

It imports no project app; the apps import it. Only Django's entry points import `config`.
"""
