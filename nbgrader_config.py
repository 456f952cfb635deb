"""nbgrader settings for this course (copied into every scratch course root by autograder/nbglue.py)."""
c = get_config()  # noqa: F821 (provided by nbgrader)

# A test cell launches torchrun several times (visible + hidden variants, speed-ups measured
# as paired runs), each bounded by its own time limit in course.yaml; the cell limit sits above.
c.ExecutePreprocessor.timeout = 900
c.Execute.timeout = 900
# Keep feedback readable when a learner's code floods its output.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 100
# A deleted test cell is put back (and run), rather than silently scoring nothing.
c.OverwriteCells.add_missing_cells = True
