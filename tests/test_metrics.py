"""Metrics on hand-built embeddings with known answers, and parity with a loop transcription of the protocol."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau

from hierarcaps.data import load_official
from hierarcaps.errors import HierarcapsError
from hierarcaps.metrics import EmbeddedBenchmark, kendall_tau_rows, length_baselines, per_unit_metrics, score
from hierarcaps.metrics.bootstrap import bootstrap_cis
from hierarcaps.metrics.retrieval import recall_at_k

from .reference_protocol import reference_scores

RADII = np.array([[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 4.0]])


def basis_bench(texts: list[list[str]], weights: list[list[float]], row_image: list[int],
                radii: np.ndarray = RADII) -> EmbeddedBenchmark:
    """Each text is its own basis vector, so an image's similarity to text t is its weight on t (normalised)."""
    n, k = len(texts), len(texts[0])
    text_emb = np.eye(n * k).reshape(n, k, n * k)
    w = np.array(weights, dtype=np.float64)
    image_emb = w / np.linalg.norm(w, axis=1, keepdims=True)
    return EmbeddedBenchmark(np.array(texts, dtype=object), text_emb, np.zeros(n * k), image_emb,
                             np.array(row_image), text_radii=radii)


TEXTS = [["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"]]
WEIGHTS = [[0.1, 0.3, 0.2, 0.9, 0.5, 0, 0, 0], [0, 0, 0, 0, 0.2, 0.4, 0.6, 0.8]]


def test_hand_built_chains_give_known_precision_recall_and_order_aware_recall() -> None:
    per_unit, chains = per_unit_metrics(basis_bench(TEXTS, WEIGHTS, [0, 1]))
    flat = np.array(TEXTS).reshape(-1)
    assert [list(flat[p]) for p in chains["image"].predictions] == [["a1", "b1", "a4"], ["a1", "b1", "b2", "b3", "b4"]]
    np.testing.assert_allclose(per_unit["precision"], [2 / 3, 4 / 5])
    np.testing.assert_allclose(per_unit["recall"], [2 / 4, 4 / 4])
    np.testing.assert_allclose(per_unit["order_aware_recall"], [2 / 4, 4 / 4])
    np.testing.assert_allclose(per_unit["recall_tier1"], [1, 1])
    np.testing.assert_allclose(per_unit["recall_tier2"], [0, 1])
    np.testing.assert_allclose(per_unit["f1"], [2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 2 * 0.8 / 1.8])
    np.testing.assert_allclose(per_unit["d_corr"], [1, 1])


def test_duplicate_strings_are_one_prediction() -> None:
    texts = [["animal", "a2", "a3", "a4"], ["animal", "b2", "b3", "b4"]]
    per_unit, chains = per_unit_metrics(basis_bench(texts, WEIGHTS, [0, 1]))
    # image 0 moves from row 0's "animal" to row 1's "animal": the same string, so no new prediction
    assert len(chains["image"].predictions[0]) == 2
    np.testing.assert_allclose(per_unit["precision"], [1.0, 1.0])


def test_ties_go_to_the_first_text_in_row_major_order() -> None:
    weights = [[0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0, 0, 1]]   # a4 and b4 tie, both at the last threshold
    per_unit, chains = per_unit_metrics(basis_bench(TEXTS, weights, [0, 1]))
    assert [p[-1] for p in chains["image"].predictions] == [3, 3]
    np.testing.assert_allclose(per_unit["recall_tier4"], [1, 0])


def test_several_references_per_image() -> None:
    per_unit, _ = per_unit_metrics(basis_bench(TEXTS, [WEIGHTS[1]], [0, 0]))
    # both rows are references of the single image: every prediction is a hit
    np.testing.assert_allclose(per_unit["precision"], [1.0])
    np.testing.assert_allclose(per_unit["recall"], [1.0])


def upstream_tau(row: np.ndarray) -> float:
    """The reference implementation's d_corr of one row: tau between the stable argsort and the tier order."""
    return kendalltau(np.argsort(row, kind="stable"), np.arange(1, len(row) + 1)).statistic


def test_d_corr_on_known_orders_and_against_scipy() -> None:
    np.testing.assert_allclose(kendall_tau_rows(np.array([[1, 2, 3, 4], [4, 3, 2, 1], [1, 3, 2, 4.0]])),
                               [1, -1, 4 / 6])
    radii = np.random.default_rng(1).random((300, 4))
    np.testing.assert_allclose(kendall_tau_rows(radii), [upstream_tau(r) for r in radii], atol=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=7, unique=True))
def test_d_corr_equals_the_upstream_value_on_every_row_without_ties(row: list[float]) -> None:
    assert kendall_tau_rows(np.array([row]))[0] == pytest.approx(upstream_tau(np.array(row)), abs=1e-12)


@pytest.mark.parametrize("collapse", ["constant", "repeated_in_chain", "zero", "constant_radii"])
def test_a_collapsed_model_scores_zero_d_corr_and_chance_retrieval_never_one(collapse: str) -> None:
    bench = _random_bench(40, 0, False)
    text, radii = bench.text_emb.copy(), None
    if collapse == "constant":
        text[:] = text[0, 0]
    elif collapse == "repeated_in_chain":
        text[:] = text[:, :1]                       # every tier of a row is its tier-1 vector
    elif collapse == "zero":
        text[:] = 0.0                               # what rows whose norm overflowed would normalise to
    else:
        radii = np.full(bench.texts.shape, 0.5)
    collapsed = EmbeddedBenchmark(bench.texts, text, bench.root, bench.image_emb, bench.row_image, text_radii=radii)
    scores = score(collapsed, resamples=10)
    assert scores["d_corr"]["value"] == 0.0
    assert score(bench, resamples=10)["d_corr"]["value"] != 0.0          # the control: a real spread is scored
    if collapse in ("constant", "zero"):         # every caption ties for every image: chance, not a perfect score
        assert scores["i2t_R@1"]["value"] == pytest.approx(1 / 40)
        assert scores["t2i_R@1"]["value"] == pytest.approx(1 / 40)


def test_retrieval_recall_at_k_counts_strictly_higher_negatives() -> None:
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.5, 0.1, 0.5]])
    positive = np.eye(3, dtype=bool)
    hits = recall_at_k(sim, positive, (1, 2))
    np.testing.assert_array_equal(hits[1], [1, 0, 0.5])   # row 2 ties with a negative: a coin flip, not a hit
    np.testing.assert_array_equal(hits[2], [1, 1, 1])


def test_tied_retrieval_scores_the_mean_over_every_tie_break() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 7))
        sims = rng.integers(0, 3, size=n).astype(float)
        positive = np.zeros(n, dtype=bool)
        positive[rng.choice(n, int(rng.integers(1, n + 1)), replace=False)] = True
        for k in range(1, n + 1):
            brute = np.mean([any(positive[i] for i in sorted(range(n), key=lambda i: (-sims[i], p[i]))[:k])
                             for p in itertools.permutations(range(n))])
            assert recall_at_k(sims[None], positive[None], (k,))[k][0] == pytest.approx(brute, abs=1e-12)


def _random_bench(rows: int, seed: int, share_images: bool) -> EmbeddedBenchmark:
    rng = np.random.default_rng(seed)
    texts = np.array([r.positive for r in load_official("test")[:rows]], dtype=object)
    texts[5, 0] = texts[6, 0] = texts[7, 1]          # duplicated strings across rows and tiers
    distinct, inverse = np.unique(texts.astype(str), return_inverse=True)
    vectors = rng.standard_normal((len(distinct) + 1, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    row_image = np.arange(rows) // 2 if share_images else np.arange(rows)
    images = rng.standard_normal((row_image.max() + 1, 16))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    return EmbeddedBenchmark(texts, vectors[inverse.reshape(texts.shape)], vectors[-1], images, row_image)


@pytest.mark.parametrize(("seed", "share_images"), [(0, False), (1, True), (2, False)])
def test_parity_with_the_loop_transcription_of_the_protocol(seed: int, share_images: bool) -> None:
    bench = _random_bench(120, seed, share_images)
    ours = score(bench, resamples=10)
    ref = reference_scores(bench.texts.tolist(), bench.text_emb, bench.root, bench.image_emb, bench.row_image.tolist())
    for name, value in ref.items():
        assert ours[name]["value"] == pytest.approx(value, abs=1e-12), name


def mean_tau_over_tie_breaks(row: np.ndarray) -> float:
    """Brute force: the protocol's tau (argsort of the radii against the tier order) for every sorted order
    of the row, i.e. every way of breaking its ties, averaged."""
    orders = [p for p in itertools.permutations(range(len(row)))
              if all(row[p[a]] <= row[p[a + 1]] for a in range(len(row) - 1))]
    return float(np.mean([kendalltau(order, np.arange(len(row))).statistic for order in orders]))


def test_a_tied_pair_counts_half_concordant_half_discordant() -> None:
    assert kendall_tau_rows(np.array([[1.0, 1, 2, 3]]))[0] == pytest.approx(5 / 6)   # the tie counts 0
    assert kendall_tau_rows(np.array([[1.0, 1, 1, 1]]))[0] == 0
    assert kendall_tau_rows(np.array([[4.0, 3, 2, 1]]))[0] == -1
    rows = np.random.default_rng(0).integers(1, 4, size=(60, 4)).astype(float)
    np.testing.assert_allclose(kendall_tau_rows(rows), [mean_tau_over_tie_breaks(r) for r in rows], atol=1e-12)
    # the reference's stable sort breaks ties in tier order: the leak this package removes
    assert upstream_tau(np.array([1.0, 1, 1, 1])) == 1


def test_length_baseline_on_the_real_test_set() -> None:
    texts = np.array([r.positive for r in load_official("test")], dtype=object)
    result = length_baselines(texts)
    # the confound the protocol warns about, with ties counted as half (not broken in tier order)
    assert result["length_chars"]["d_corr"]["value"] == pytest.approx(0.869, abs=5e-4)
    assert result["length_words"]["d_corr"]["value"] == pytest.approx(0.890, abs=5e-4)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = np.random.default_rng(0).random((500, 2))
    a, b = bootstrap_cis(values, seed=3), bootstrap_cis(values, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.all(a[:, 0] < values.mean(0)) and np.all(values.mean(0) < a[:, 1])
    np.testing.assert_allclose(bootstrap_cis(np.full((50, 1), 0.25)), [[0.25, 0.25]])


def test_nan_embeddings_are_refused_with_a_clear_error() -> None:
    bench = _random_bench(10, 0, False)
    bad = bench.text_emb.copy()
    bad[2, 1, 0] = np.nan
    with pytest.raises(HierarcapsError, match="NaN"):
        EmbeddedBenchmark(bench.texts, bad, bench.root, bench.image_emb, bench.row_image)


def test_the_bootstrap_draws_the_same_resamples_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.metrics import bootstrap

    values = np.random.default_rng(0).random((97, 3))
    at_once = bootstrap.bootstrap_cis(values, resamples=50, seed=4)
    whole = next(bootstrap.resample_counts(97, 50, 4))
    monkeypatch.setattr(bootstrap, "CHUNK_CELLS", 97 * 7)                  # chunks of 7 resamples
    chunks = list(bootstrap.resample_counts(97, 50, 4))
    assert [len(c) for c in chunks] == [7] * 7 + [1] and np.array_equal(np.concatenate(chunks), whole)
    assert np.allclose(bootstrap.bootstrap_cis(values, resamples=50, seed=4), at_once, rtol=1e-12, atol=0)
