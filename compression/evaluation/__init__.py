"""How a candidate is measured: fidelity and task metrics (``metrics``), latency, MACs and
parameters (``measure``)."""
