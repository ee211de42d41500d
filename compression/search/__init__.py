"""The search over cuts and forms: the shared context (``context``), the run over amounts
(``run``), the ladder and layer-split decisions, the precision/runtime/packing/sparsity steps,
the evaluation splits and the verdict (``verify``)."""
