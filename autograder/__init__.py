"""Course autograder: torchrun-launched checks, self-check widgets, nbgrader glue and the `course` CLI."""
from .harness import check, run_check

__all__ = ["check", "run_check"]
