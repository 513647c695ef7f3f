"""mbt.data.tf_import: TensorFlow (and mbt.summaries' TensorBoard writer) load without Keras,
and the pipeline's tf.data functions are traced without AutoGraph."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from mbt.data import tf_import

_PROBE = """
import json, sys, tempfile
import mbt.data
import tensorflow as tf
jax_with_tf = "jax" in sys.modules
import mbt.data.pipeline
from mbt import summaries, train  # JAX loads now
writer = summaries.make_writer(tempfile.mkdtemp(), True)  # TensorBoard, without Keras too
writer.write_hparams({"lr": 0.1})
writer.write_scalars(1, {"loss": 1.0})
writer.close()
loaded = "keras" in sys.modules
from tensorflow.keras import layers  # tf.keras still works, loading Keras now
print(json.dumps({"keras_with_tf": loaded, "dense": layers.Dense.__name__,
                  "keras_after": "keras" in sys.modules, "jax_with_tf": jax_with_tf,
                  "jax_after": train.jax.numpy.ones(2).sum().item()}))
"""


def _probe(**env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tensorflow_and_tensorboard_writer_load_without_keras_and_tf_keras_still_works():
    pytest.importorskip("keras")
    assert _probe(**{tf_import.KEEP_KERAS_ENV: "0"}) == {
        "keras_with_tf": False,
        "dense": "Dense",
        "keras_after": True,
        "jax_with_tf": False,  # TFLite's optional import of JAX is refused too
        "jax_after": 2.0,  # and JAX loads as usual afterwards
    }


@pytest.mark.parametrize("keep,installed", [("1", False), ("0", True), ("", True)])
def test_the_environment_variable_keeps_keras(monkeypatch, keep, installed):
    monkeypatch.setenv(tf_import.KEEP_KERAS_ENV, keep)
    monkeypatch.delitem(sys.modules, "tensorflow")  # as before TF is imported
    try:
        tf_import.install()
        assert (tf_import._HOOK in sys.meta_path) == installed
    finally:
        tf_import.uninstall()
    assert tf_import._HOOK not in sys.meta_path


def test_this_process_loaded_tensorflow_through_the_hook():
    # conftest imports mbt.data first; TF's own loader is back in place afterwards.
    assert tf_import._HOOK not in sys.meta_path
    assert type(tf.__loader__).__name__ == "SourceFileLoader"
    assert tf.__path__[0] and tf.__path__[1]  # where tf.keras is found


def test_as_graph_traces_without_autograph():
    def absolute(x):
        if x < 0:  # a Python branch on a tensor: only AutoGraph turns it into tf.cond
            return -x
        return x

    numbers = tf.data.Dataset.from_tensor_slices([-2, 3])
    assert list(numbers.map(absolute).as_numpy_iterator()) == [2, 3]
    with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
        numbers.map(tf_import.as_graph(absolute))
