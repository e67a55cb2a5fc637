"""Evaluation statistics on constructed scores: perfect, random, inverted."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from components.evaluation import stats

Y = np.array([0] * 120 + [1] * 80)


def test_perfect_scores():
    p = np.where(Y == 1, 0.9, 0.1)
    t = stats.choose_threshold(Y, p)
    m = stats.bootstrap(Y, p, t, n=300)
    for name in stats.METRICS:
        perfect = 0.01 if name == "brier" else 1.0       # (1 - 0.9)^2
        assert m[name]["value"] == pytest.approx(perfect) and m[name]["ci_low"] == pytest.approx(perfect), name
        assert m[name]["ci_high"] == pytest.approx(perfect), name
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


def test_cluster_bootstrap_resamples_whole_patients():
    """Copying one patient's records 30 times adds no independent evidence: the cluster
    interval widens (that patient now weighs more and comes and goes as a block), and is
    wider than an interval that takes the copies for independent records."""
    rng = np.random.default_rng(4)
    patients = np.repeat(np.arange(40), 5)                              # 40 patients x 5 records
    y = (np.arange(200) % 5 < 2).astype(int)                             # 2 positives per patient
    p = np.clip(0.35 * y + 0.65 * rng.random(200), 0, 1)
    copies = np.concatenate([np.arange(200)] + [np.nonzero(patients == 0)[0]] * 30)
    p_dup = p.copy()
    p_dup[patients == 0] = np.where(y[patients == 0] == 1, 0.05, 0.95)  # a patient the model gets wrong
    base_width = _width(stats.bootstrap(y, p_dup, 0.5, patients, n=2000, seed=1))
    dup_width = _width(stats.bootstrap(y[copies], p_dup[copies], 0.5, patients[copies], n=2000, seed=1))
    flat_dup = _width(stats.bootstrap(y[copies], p_dup[copies], 0.5, None, n=2000, seed=1))
    assert dup_width > base_width * 1.3
    assert flat_dup < dup_width / 1.3
    # each resample holds whole patients: as many records per drawn patient as it has
    for idx in stats.cluster_resamples(patients[copies], n=20, seed=0):
        counts = np.bincount(patients[copies][idx], minlength=40)
        assert all(c % 5 == 0 for c in counts[1:]) and counts[0] % 155 == 0


def _width(metrics):
    return metrics["roc_auc"]["ci_high"] - metrics["roc_auc"]["ci_low"]


def test_temperature_scaling_recovers_an_overconfident_model():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-logits))).astype(int)     # calibrated at T = 1
    overconfident = 1 / (1 + np.exp(-3 * logits))                       # a model 3x too sure
    t = stats.fit_temperature(y, overconfident)
    assert 2.6 < t < 3.4
    fixed = stats.apply_temperature(overconfident, t)
    assert stats.calibration(y, fixed)["ece"] < stats.calibration(y, overconfident)["ece"] / 2
    assert roc_auc_score(y, fixed) == pytest.approx(roc_auc_score(y, overconfident))   # ranking unchanged


def test_paired_cluster_bootstrap_and_holm():
    rng = np.random.default_rng(6)
    patients = np.repeat(np.arange(60), 4)
    y = (np.arange(240) % 4 == 0).astype(int)
    good = np.clip(0.5 * y + 0.5 * rng.random(240), 0, 1)
    scores = {"good": good, "noise": rng.random(240), "good_too": np.clip(good + rng.normal(0, 0.01, 240), 0, 1)}
    rows = {(r["model_1"], r["model_2"]): r for r in stats.paired_auc_bootstrap(y, scores, patients, n=1000)}
    assert rows[("good", "noise")]["p_value"] < 0.01 and rows[("good", "noise")]["ci_low"] > 0
    assert rows[("good", "good_too")]["p_value"] > 0.05
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


@pytest.mark.parametrize("records, patients", [(300, 300), (600, 40), (240, 3)])
def test_vectorised_bootstrap_gives_the_intervals_of_the_loop(records, patients):
    """Same resampled patients, same metrics: the intervals agree to well under three decimals
    (ties in the scores, per-record thresholds and resamples without a class included)."""
    rng = np.random.default_rng(records + patients)
    y = (rng.random(records) < 0.3).astype(int)
    p = np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1), 2)            # many ties
    clusters = rng.integers(0, patients, records)
    for threshold in (0.45, np.where(np.arange(records) % 2, 0.4, 0.5)):
        new = stats.bootstrap(y, p, threshold, clusters, n=400, seed=3)
        old = stats.bootstrap_reference(y, p, threshold, clusters, n=400, seed=3)
        for m in stats.METRICS:
            assert new[m]["ci_low"] == pytest.approx(old[m][0], abs=1e-9, nan_ok=True), m
            assert new[m]["ci_high"] == pytest.approx(old[m][1], abs=1e-9, nan_ok=True), m


def test_paired_p_value_is_a_bound_when_no_resample_crosses_zero():
    rng = np.random.default_rng(8)
    y = (np.arange(300) % 3 == 0).astype(int)
    strong, noise = y + 0.1 * rng.random(300), rng.random(300)
    (row,) = stats.paired_auc_bootstrap(y, {"strong": strong, "noise": noise}, np.arange(300), n=500)
    assert row["p_value"] == pytest.approx(1 / 500) and row["p_value_is_bound"]
    assert stats.format_p(row["p_value"], row["p_value_is_bound"]) == "< 0.002"
    # a loop over the resamples with scikit-learn gives the same interval
    diffs = [roc_auc_score(y[i], strong[i]) - roc_auc_score(y[i], noise[i])
             for i in stats.cluster_resamples(np.arange(300), 500, 0)]
    assert row["ci_low"] == pytest.approx(np.percentile(diffs, 2.5)) and min(diffs) > 0


def test_only_a_flattening_temperature_means_collapse():
    """A model whose scores carry no signal fits the temperature at the upper bound (every
    answer flattened towards 0.5): collapsed. Scores that separate the validation split push
    the temperature down (sharper is better), and even at the lower bound that model is fine."""
    from components.evaluation.scoring import collapse

    y = np.array([0, 1] * 50)
    separating = np.where(y == 1, 0.8, 0.2) + np.linspace(-0.05, 0.05, len(y))
    t = stats.fit_temperature(y, separating)
    assert t < 0.1 and collapse(stats.apply_temperature(separating, t), t) is None
    low = stats.TEMPERATURE_BOUNDS[0]
    assert collapse(stats.apply_temperature(separating, low), low) is None
    noise = np.repeat(np.random.default_rng(0).uniform(0.05, 0.95, len(y) // 2), 2)  # each score: one 0, one 1
    t = stats.fit_temperature(y, noise)
    assert stats.temperature_at_upper_bound(t) and collapse(stats.apply_temperature(noise, t), t).startswith("collapsed")
