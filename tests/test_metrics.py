import json
import math

import pytest

from retain.metrics import AccuracyMatrix


def _matrix() -> AccuracyMatrix:
    m = AccuracyMatrix(3)
    m.set_initial([0.5, 0.4, 0.3])
    m.add_row([0.9, 0.5, 0.35])
    m.add_row([0.7, 0.8, 0.45])
    m.add_row([0.6, 0.75, 0.9])
    return m


def test_summaries_by_hand():
    m = _matrix()
    assert m.acc() == pytest.approx((0.6 + 0.75 + 0.9) / 3)
    assert m.bwt() == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)
    assert m.fwt() == pytest.approx(((0.5 - 0.4) + (0.45 - 0.3)) / 2)
    # forgetting: best accuracy reached before the last task minus the final one
    assert m.forgetting() == pytest.approx(((0.9 - 0.6) + (0.8 - 0.75)) / 2)


def test_partial_matrix_uses_trained_tasks_only():
    m = AccuracyMatrix(3)
    m.add_row([0.9, 0.1, 0.2])
    assert m.acc() == pytest.approx(0.9)
    assert math.isnan(m.bwt()) and math.isnan(m.fwt())
    m.add_row([0.8, 0.7, 0.2])
    assert m.acc() == pytest.approx(0.75)
    assert m.bwt() == pytest.approx(-0.1)


def test_json_round_trip_is_exact():
    m = _matrix()
    back = AccuracyMatrix.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.rows == m.rows and back.initial == m.initial
    assert back.summary() == m.summary()


def test_wrong_row_length_and_too_many_rows():
    m = AccuracyMatrix(2)
    with pytest.raises(ValueError):
        m.add_row([0.1])
    m.add_row([0.1, 0.2])
    m.add_row([0.1, 0.2])
    with pytest.raises(ValueError):
        m.add_row([0.1, 0.2])
