"""SlimServe's compression engine: prune, rebuild and verify a model for a device profile.

A pure library (no web stack). The public door is :func:`compress`:

>>> from compression import compress, load_variant
>>> variant = compress(model, "cpu", example_inputs=x[:8], calibration=[x])  # doctest: +SKIP
>>> variant.save("out/")  # doctest: +SKIP
>>> same = load_variant("out/", model=fresh_model)  # doctest: +SKIP
"""

from compression.api import compress
from compression.output.variant import CompressedModel, load_variant
from compression.profiles import PROFILES, DeviceProfile

__all__ = ["compress", "load_variant", "PROFILES", "DeviceProfile", "CompressedModel"]
