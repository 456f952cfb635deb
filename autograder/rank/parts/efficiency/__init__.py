"""Rank parts of 09_efficiency (efficiency_parts.py): call the learner's functions on this rank's inputs and send
back what they produced. One module per topic; the harness finds a part here by its exercise name."""
from .accumulation import accumulate, autocast
from .activations import checkpointing
from .resumption import resume
from .sharding import fsdp_mixed

__all__ = ["accumulate", "autocast", "checkpointing", "fsdp_mixed", "resume"]
