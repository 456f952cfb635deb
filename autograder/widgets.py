"""Self-check buttons for the student notebooks: one button per exercise, over the same run_check as grading."""
from __future__ import annotations

import html
from typing import Callable

from . import config
from .notebook import grading
from .verdict import Verdict


def self_check(assignment: str) -> None:
    """Show a self-check button for each exercise of an assignment (nothing while nbgrader grades)."""
    if grading():
        return
    from IPython.display import display

    from .harness import NOTEBOOK_CACHE, run_check

    display(check_buttons(assignment, lambda exercise_id: run_check(exercise_id, cache=NOTEBOOK_CACHE)))


def check_buttons(assignment: str, runner: Callable[[str], Verdict]):
    """The widget: one row per exercise, a button and the place its verdict appears."""
    import ipywidgets as w

    course = config.load()
    rows = []
    for exercise in course.assignment(assignment).exercises:
        button = w.Button(description=f"Check {exercise.id}", layout=w.Layout(width="220px"),
                          tooltip=f"Checks your {exercise.module} against the reference")
        out = w.HTML(value="<i>not checked yet</i>")

        def on_click(_, exercise=exercise, button=button, out=out):
            button.disabled = True
            button.icon = "spinner"
            out.value = f"<i>checking {html.escape(exercise.id)} (a torchrun check takes 10-60 s)...</i>"
            try:
                verdict = runner(exercise.id)
                out.value = verdict.to_html()
            except Exception as exc:  # a broken environment must show up in the widget, not vanish
                out.value = f"<b style='color:#b42318'>could not run the check: {html.escape(repr(exc))}</b>"
            finally:
                button.disabled = False
                button.icon = ""

        button.on_click(on_click)
        rows.append(w.HBox([button, out]))
    return w.VBox(rows)
