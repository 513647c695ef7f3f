"""Robustness evaluation: noise at the requested SNR, the conditions, and the mode end to end."""

import json
import math
import os

import numpy as np
import pytest

import train_fixtures
from mbt import robustness
from mbt import train


@pytest.mark.parametrize('snr_db', [20.0, 10.0, 5.0, 0.0, -5.0])
@pytest.mark.parametrize('shape', [(3, 4, 16, 16, 3), (5, 32, 16, 1), (2, 4096)])
def test_noise_is_added_at_the_requested_snr(snr_db, shape):
    rng = np.random.default_rng(0)
    # Different scales and a non-zero mean per example: the power must be per example.
    scales = np.arange(1, shape[0] + 1).reshape((-1,) + (1,) * (len(shape) - 1))
    clean = (rng.normal(size=shape) * scales + 0.3 * scales).astype(np.float32)
    noisy = robustness.add_white_noise(clean, snr_db, np.random.default_rng(1))
    assert noisy.shape == clean.shape and noisy.dtype == np.float32
    np.testing.assert_allclose(robustness.measured_snr_db(clean, noisy), snr_db, atol=0.1)
    noise = (noisy - clean).reshape(shape[0], -1)
    # Zero-mean, not constant, and independent of the signal.
    assert np.all(np.abs(noise.mean(axis=1)) < 0.2 * noise.std(axis=1))
    assert abs(np.corrcoef(noise.ravel(), clean.reshape(shape[0], -1).ravel())[0, 1]) < 0.2


def test_noise_is_deterministic_skips_zero_examples_and_infinity_is_clean():
    clean = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    clean[1] = 0.0
    first = robustness.add_white_noise(clean, 0.0, np.random.default_rng(7))
    again = robustness.add_white_noise(clean, 0.0, np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[1], 0.0)
    assert not np.allclose(first[0], clean[0])
    np.testing.assert_array_equal(
        robustness.add_white_noise(clean, math.inf, np.random.default_rng(7)), clean)


def test_conditions_cover_every_target_snr_and_missing_modality():
    both = robustness.make_conditions(('rgb', 'spectrogram'))
    names = [c.name for c in both]
    assert names[0] == 'clean' and len(both) == 1 + 3 * 5 + 2
    assert 'video noise -5 dB' in names and 'both noise 20 dB' in names
    by_name = {c.name: c for c in both}
    assert by_name['audio noise 0 dB'].noised == ('spectrogram',)
    assert by_name['both noise 0 dB'].noised == ('rgb', 'spectrogram')
    assert by_name['no video'].dropped == ('rgb',)
    batch = {'rgb': np.ones((2, 3), np.float32), 'spectrogram': np.ones((2, 4), np.float32),
             'label': np.eye(2, dtype=np.float32)}
    out = by_name['no audio'].apply(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(out['spectrogram'], 0.0)
    np.testing.assert_array_equal(out['rgb'], 1.0)
    np.testing.assert_array_equal(out['label'], batch['label'])
    audio_only = robustness.make_conditions(('spectrogram',))
    assert [c.target for c in audio_only] == ['none'] + ['audio'] * 5  # no 'both', no removal


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('robustness'))
    config = train_fixtures.tiny_config(num_train_steps=8)
    data = train_fixtures.InMemoryData(noise=0.3)
    train.train_and_evaluate(config, workdir, data)
    return config, workdir, data


def test_robustness_mode_writes_json_table_and_plot(trained):
    config, workdir, data = trained
    report = robustness.run_robustness(config, workdir, data)
    rows = {r['name']: r for r in report['conditions']}
    assert len(rows) == 18 and report['metric'] == 'top1' and report['step'] == 8
    # The clean condition is exactly the restored checkpoint's single-view evaluation.
    reference = train.evaluate(config, workdir, 'evaluate', data)
    assert rows['clean']['metrics']['loss'] == pytest.approx(reference['loss'], rel=1e-6)
    assert rows['clean']['metrics']['top1'] == reference['top1']
    # Noise and missing inputs reach the model: the loss moves, more at lower SNR.
    clean_loss = rows['clean']['metrics']['loss']
    assert rows['both noise -5 dB']['metrics']['loss'] != pytest.approx(clean_loss, rel=1e-4)
    assert rows['no video']['metrics']['loss'] != pytest.approx(clean_loss, rel=1e-4)
    assert (abs(rows['both noise -5 dB']['metrics']['loss'] - clean_loss)
            > abs(rows['both noise 20 dB']['metrics']['loss'] - clean_loss))

    with open(os.path.join(workdir, 'robustness.json'), encoding='utf-8') as f:
        saved = json.load(f)
    assert [r['name'] for r in saved['conditions']] == [r['name'] for r in report['conditions']]
    assert saved['conditions'][0]['snr_db'] is None and saved['snrs_db'] == [20, 10, 5, 0, -5]
    with open(os.path.join(workdir, 'robustness.md'), encoding='utf-8') as f:
        table = f.read()
    assert '| video | ' in table and '| -5 dB |' in table and 'no audio (spectrogram zeros)' in table
    with open(os.path.join(workdir, 'robustness.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_robustness_without_a_checkpoint_says_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match='No checkpoint in .*train first'):
        robustness.run_robustness(train_fixtures.tiny_config(), str(tmp_path),
                                  train_fixtures.InMemoryData(), plot=False)
