"""Data: the dataset registry (`registry`), media decoding (`media`), synthetic dataset copies
(`synthetic`), TFDS builders and the tf.data input pipeline. Only the builders and the
pipeline import TensorFlow."""

from mbt.data import tf_import

tf_import.install()
