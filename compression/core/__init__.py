"""The engine's vocabulary: errors, model inputs, named-step registries, time limits and the
:class:`~compression.core.candidate.Candidate` record. Imports nothing else of the engine."""
