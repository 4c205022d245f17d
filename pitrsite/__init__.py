"""The Celery app is loaded by the task modules (and `celery -A pitrsite`), not here: a management
command that sends no task (restore, backup) does not pay Celery's and kombu's import time."""


def __getattr__(name: str):
    if name == "celery_app":
        from pitrsite.celery import app

        return app
    raise AttributeError(f"module 'pitrsite' has no attribute {name!r}")
