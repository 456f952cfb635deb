"""Rank parts, one module per assignment: `part(ctx, learner, inputs) -> outputs`.

A part calls the learner's functions on this rank's inputs (sent by the harness) and
returns what they produced: tensors, state dicts, file contents. It computes no expected
value and judges nothing. Observations it adds (which collectives were called, what a
spy saw) serve as hints for a failing learner, never as evidence of success.
"""
