"""Tests for the Scenic/DMVR SequenceExample reader and writer."""

import numpy as np
import pytest
import tensorflow as tf

from mbt.data import scenic_tfrecord


def _gradient_video(num_frames, height, width, offset):
  """Smooth frames (JPEG-friendly) that differ per frame: uint8 [T, H, W, 3]."""
  t = np.arange(num_frames)[:, None, None, None]
  y = np.arange(height)[None, :, None, None]
  x = np.arange(width)[None, None, :, None]
  c = np.arange(3)[None, None, None, :]
  return ((offset + 20 * t + 2 * y + x + 40 * c) % 256).astype(np.uint8)


def _examples():
  rng = np.random.default_rng(0)
  return [
      {
          'rgb': _gradient_video(5, 24, 32, offset=0),
          'audio': rng.uniform(-1, 1, 2 * 16000).astype(np.float32),
          'spectrogram': rng.normal(size=(200, 128)).astype(np.float32),
          'label': [3, 7],
          'label_text': ['Dog', 'Bark'],
          'video_path': 'clips/abc.mp4',
          'segment_start': 30.0,
          'segment_end': 32.0,
      },
      {
          'rgb': _gradient_video(4, 24, 32, offset=50),
          'audio': rng.uniform(-1, 1, 16000).astype(np.float32),
          'spectrogram': rng.normal(size=(100, 128)).astype(np.float32),
          'label': [1],
          'video_path': 'clips/def.mp4',
          'segment_start': 0.0,
          'segment_end': 1.0,
      },
  ]


def test_round_trip_all_modalities(tmp_path):
  examples = _examples()
  for i, example in enumerate(examples):  # two files, read back through one glob
    assert scenic_tfrecord.write_scenic_tfrecord(
        str(tmp_path / f'train-{i:05d}-of-00002'), [example]) == 1
  dataset = scenic_tfrecord.read_scenic_tfrecords(str(tmp_path / 'train-*-of-*'))
  got = list(dataset.as_numpy_iterator())
  assert len(got) == 2
  for example, read in zip(examples, got):
    assert read['rgb'].dtype == np.uint8
    assert read['rgb'].shape == example['rgb'].shape
    # JPEG is lossy; smooth frames come back within a few levels.
    assert np.abs(read['rgb'].astype(int) - example['rgb'].astype(int)).mean() < 3
    assert read['audio'].dtype == np.float32
    np.testing.assert_array_equal(read['audio'], example['audio'])
    np.testing.assert_array_equal(read['spectrogram'], example['spectrogram'])
    assert read['spectrogram'].shape[1] == 128
    assert read['label'].dtype == np.int64
    np.testing.assert_array_equal(read['label'], example['label'])
    assert read['video_path'] == example['video_path'].encode()
    assert read['id'] == example['video_path'].encode()
    assert read['segment_start'] == pytest.approx(example['segment_start'])
    assert read['segment_end'] == pytest.approx(example['segment_end'])
    assert read['has_audio']


def test_melspec_only_records_without_timestamps(tmp_path):
  spectrogram = np.arange(3 * 100 * 128, dtype=np.float32).reshape(300, 128)
  path = str(tmp_path / 'eval.tfrecord')
  scenic_tfrecord.write_scenic_tfrecord(path, [{'spectrogram': spectrogram, 'label': [5]}])
  layout = scenic_tfrecord.inspect_layout(path)
  assert (layout.has_rgb, layout.has_waveform, layout.has_melspec) == (False, False, True)
  (read,) = list(scenic_tfrecord.read_scenic_tfrecords(path).as_numpy_iterator())
  assert set(read) == {'id', 'video_path', 'segment_start', 'segment_end', 'spectrogram',
                       'has_audio', 'label'}
  np.testing.assert_array_equal(read['spectrogram'], spectrogram)
  # Without timestamps the segment is the stored duration: 300 mel frames = 3 s.
  assert (read['segment_start'], read['segment_end']) == (0.0, 3.0)


def test_reader_batches_with_tf_data(tmp_path):
  path = str(tmp_path / 'x.tfrecord')
  scenic_tfrecord.write_scenic_tfrecord(path, _examples())
  dataset = scenic_tfrecord.read_scenic_tfrecords(path).map(
      lambda e: {'rgb': e['rgb'][:4], 'label': tf.reduce_sum(tf.one_hot(e['label'], 10), 0)})
  batch = next(iter(dataset.batch(2)))
  assert batch['rgb'].shape == (2, 4, 24, 32, 3)
  np.testing.assert_array_equal(batch['label'].numpy().sum(1), [2, 1])


def test_bad_inputs_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing-here'):
    scenic_tfrecord.read_scenic_tfrecords(str(tmp_path / 'nothing-here-*'))
  with pytest.raises(ValueError, match='spectrogram must be'):
    scenic_tfrecord.make_sequence_example(
        {'spectrogram': np.zeros((150, 128), np.float32), 'label': [0]})
  with pytest.raises(ValueError, match='at least one of'):
    scenic_tfrecord.make_sequence_example({'label': [0]})
  not_sequence = str(tmp_path / 'plain.tfrecord')
  with tf.io.TFRecordWriter(not_sequence) as writer:
    example = tf.train.Example()
    example.features.feature['x'].int64_list.value.append(1)
    writer.write(example.SerializeToString())
  with pytest.raises(ValueError, match='plain.tfrecord'):
    scenic_tfrecord.inspect_layout(not_sequence)
