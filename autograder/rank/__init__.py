"""The rank side of the checks: what runs in the learner's processes (driver, wire format, rank parts).

Nothing here knows an expected value or how a result is judged; the harness
(autograder.harness and autograder.checks) keeps that on the trusted side.
"""
