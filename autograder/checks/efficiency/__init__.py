"""09_efficiency (efficiency_parts.py): gradient accumulation with no_sync (accumulate) and mixed precision with
autocast and GradScaler (autocast). Evidence measured from outside the learner's processes: the weights after a step
against the trusted reference (reference.py), and the bytes a step sent on the job's own loopback (Run.sent_bytes).
FSDP2's mixed-precision policy, activation checkpointing and the resharded resume (contract: COURSE_DESIGN.md)
come next."""
