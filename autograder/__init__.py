"""Course autograder: torchrun-launched checks, self-check widgets, nbgrader glue and the `course` CLI.

Imports are lazy: the rank driver (autograder.rank) runs in the learner's processes and must
not load the harness, and `python -m autograder.<module>` must not import itself twice.
"""
__all__ = ["check", "run_check"]


def __getattr__(name):
    if name in __all__:
        from . import harness

        return getattr(harness, name)
    raise AttributeError(f"module 'autograder' has no attribute {name!r}")
