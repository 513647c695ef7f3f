"""mbt: multimodal fusion transformers for audio-visual video classification in JAX/Flax.

The model, train step and benchmarks import without TensorFlow; only `mbt.data` needs it.
"""

__version__ = "0.1.0"
