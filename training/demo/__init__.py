"""The RLHF demo: a synthetic task world, a hidden oracle, simulated labelers and a pipeline that
drives the whole loop through the platform's own services (`python manage.py rlhf_demo`).

`world` and `oracle` are plain Python (no Django, no torch) so they are fast to test.
"""


class DemoError(RuntimeError):
    """A stage failed; the message says which and what to look at."""
