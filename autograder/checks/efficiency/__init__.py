"""09_efficiency (efficiency_parts.py): gradient accumulation with no_sync (accumulate), mixed precision with autocast
and GradScaler (autocast) and with FSDP2's policy (fsdp_mixed), activation checkpointing (checkpointing). Evidence
measured from outside the learner's processes: the weights or gradients after a step against the trusted reference
(reference.py), the bytes a step sent on the job's own loopback (Run.sent_bytes) and each rank's peak memory over
a step (meter.MemoryWindow). The resharded resume (contract: COURSE_DESIGN.md) comes next."""
