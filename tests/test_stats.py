"""Evaluation statistics on constructed scores: perfect, random, inverted."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from components import stats

Y = np.array([0] * 120 + [1] * 80)


def test_perfect_scores():
    p = np.where(Y == 1, 0.9, 0.1)
    t = stats.choose_threshold(Y, p)
    m = stats.bootstrap(Y, p, t, n=300)
    for name in stats.METRICS:
        assert m[name]["value"] == m[name]["ci_low"] == m[name]["ci_high"] == 1.0, name
    assert stats.calibration(Y, p)["ece"] == pytest.approx(0.1)


def test_random_scores_give_chance_auc_inside_the_interval():
    p = np.random.default_rng(0).random(len(Y))
    m = stats.bootstrap(Y, p, 0.5, n=500, seed=1)
    auc = m["roc_auc"]
    assert auc["ci_low"] < 0.5 < auc["ci_high"] and 0.07 < auc["ci_high"] - auc["ci_low"] < 0.25
    assert auc["value"] == pytest.approx(roc_auc_score(Y, p))
    for name in stats.METRICS:
        assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"], name


def test_inverted_scores():
    p = np.where(Y == 1, 0.1, 0.9)
    m = stats.bootstrap(Y, p, 0.5, n=200)
    assert m["roc_auc"]["value"] == 0.0 and m["accuracy"]["value"] == 0.0
    assert m["recall"]["value"] == 0.0 and m["specificity"]["value"] == 0.0 and m["f1"]["value"] == 0.0


def test_threshold_rules():
    rng = np.random.default_rng(2)
    p = np.clip(Y * 0.35 + rng.random(len(Y)) * 0.65, 0, 1)
    t = stats.choose_threshold(Y, p)
    grid = np.unique(p)
    best = max(stats.at_threshold(Y, p, g)["f1"] for g in grid)
    assert stats.at_threshold(Y, p, t)["f1"] == pytest.approx(best)
    t90 = stats.choose_threshold(Y, p, target_sensitivity=0.9)
    assert stats.at_threshold(Y, p, t90)["recall"] >= 0.9
    assert stats.at_threshold(Y, p, np.nextafter(t90, 2))["recall"] < 0.9   # the highest such threshold


def test_delong_matches_sklearn_auc_and_detects_a_real_difference():
    rng = np.random.default_rng(3)
    good = np.clip(Y * 0.4 + rng.random(len(Y)) * 0.6, 0, 1)
    noise = rng.random(len(Y))
    r = stats.delong(Y, good, noise)
    assert r["auc_1"] == pytest.approx(roc_auc_score(Y, good)) and r["auc_2"] == pytest.approx(roc_auc_score(Y, noise))
    assert r["p_value"] < 1e-6
    same = stats.delong(Y, good, good)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    slightly = stats.delong(Y, good, np.clip(good + rng.normal(0, 0.01, len(Y)), 0, 1))
    assert slightly["p_value"] > 0.05
