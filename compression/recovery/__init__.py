"""Rebuilding a pruned network so it keeps its accuracy: BatchNorm recalibration, bias
compensation, the least-squares refit of the layers downstream of a cut, short distillation."""
