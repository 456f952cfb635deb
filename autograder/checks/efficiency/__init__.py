"""09_efficiency (efficiency_parts.py): gradient accumulation with no_sync (accumulate), mixed precision with autocast
and GradScaler (autocast) and with FSDP2's policy (fsdp_mixed), activation checkpointing (checkpointing), and a
training state saved sharded that resumes at another world size (resume). Evidence measured from outside the
learner's processes: weights, gradients or losses against the trusted reference (reference.py), the bytes a task
sent on the job's own loopback (Run.sent_bytes, TaskResult.sent_bytes) and each rank's peak memory over a step
(meter.MemoryWindow)."""
