"""What can be cut and how much: the dependency graph (Torch-Pruning, through ``graph`` only),
attention layouts and heads, model families, layer helpers, importance scores and the
allocation of a pruning amount over the prunable units."""
