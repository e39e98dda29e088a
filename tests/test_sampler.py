"""Sampler tests: parity with full-forward reference loops, log-prob exactness, sampling statistics,
sharding invariance, compile counts and early stopping. Tiny random GQA model on CPU."""

import jax
import numpy as np
import pytest
from scipy import stats

from memtrain_jax.config import load_config
from memtrain_jax.model import ModelConfig, forward, init_cache, init_params, stack_layers
from memtrain_jax.sampler import (
    Buckets,
    GenerationResult,
    Sampler,
    draw_tokens,
    generate,
    lookup_decode_loop,
    lookup_drafts,
    place_prefix,
    prefill_prompts,
    rows_from_prefix,
    sample,
    sample_from_prefix,
    speculate_tokens,
)
from memtrain_jax.sampler.sampler import (
    LOOKUP_MAX_ROWS,
    LOOKUP_MIN_STEPS,
    PART_COST_SLOTS,
    decode_state,
    split_prefill,
)
from memtrain_jax.sharding import make_mesh

CONFIG = ModelConfig(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)
PROMPTS = [[3, 17, 29], [200, 1, 5, 77, 9, 13, 42, 8, 100, 250, 31], [64], [9, 9, 9, 9, 120, 7]]
PAD = 0


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def sampler():
    return Sampler(CONFIG, pad_id=PAD)


def full_logits(params, sequences):
    """Teacher-forced logits [R, L, V] (float64) of right-padded sequences; causal, so padding is inert."""
    length = max(len(s) for s in sequences)
    tokens = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = s
    return np.asarray(forward(CONFIG, params, tokens), np.float64)


def reference_greedy(params, prompts, steps):
    """Greedy decoding that recomputes the full forward pass every step."""
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        logits = full_logits(params, seqs)
        for i, s in enumerate(seqs):
            s.append(int(np.argmax(logits[i, len(s) - 1])))
    return [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)]


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_greedy_matches_full_forward_reference(params):
    results = generate(CONFIG, params, PROMPTS, max_new_tokens=10)
    expected = reference_greedy(params, PROMPTS, 10)
    assert [r.tokens for r in results] == expected
    assert all(isinstance(r, GenerationResult) and not r.stopped and len(r.logprobs) == 10 for r in results)


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(0.0, None, None), (0.7, None, None), (1.6, None, None), (1.3, 12, 0.8)]
)
def test_logprobs_equal_teacher_forced_log_softmax(params, sampler, temperature, top_k, top_p):
    out = sampler(params, PROMPTS, max_new_tokens=9, temperature=temperature, top_k=top_k, top_p=top_p, seed=5)
    sequences = [p + out.tokens[i].tolist() for i, p in enumerate(PROMPTS)]
    logp = log_softmax(full_logits(params, sequences) / (temperature or 1.0))  # the tempered distribution drawn from
    for i, prompt in enumerate(PROMPTS):
        positions = len(prompt) - 1 + np.arange(9)  # logits at position t predict token t + 1
        expected = logp[i, positions, out.tokens[i]]
        np.testing.assert_allclose(out.logprobs[i], expected, rtol=0, atol=1e-5)


def test_temperature_sampling_matches_tempered_softmax(params, sampler):
    rows, temperature, prompt = 4096, 0.7, [5, 17, 42, 99, 3]
    out = sampler(params, [prompt] * rows, max_new_tokens=1, temperature=temperature, seed=11)
    logits = full_logits(params, [prompt])[0, -1]
    counts = np.bincount(out.tokens[:, 0], minlength=CONFIG.vocab_size)

    def chi_square_pvalue(probs):
        expected = probs * rows
        big = expected >= 5  # pool the rare tokens into one bin so the chi-square approximation holds
        obs = np.append(counts[big], counts[~big].sum())
        exp = np.append(expected[big], expected[~big].sum())
        return stats.chisquare(obs, exp).pvalue

    tempered = np.exp(log_softmax(logits / temperature))
    # Fixed seed, so deterministic; a correct sampler fails this only with probability 1e-4.
    assert chi_square_pvalue(tempered) > 1e-4
    # The test has power: the untempered distribution (a classic temperature bug) is rejected.
    assert chi_square_pvalue(np.exp(log_softmax(logits))) < 1e-6


def test_draw_tokens_follows_the_softmax_and_never_draws_an_excluded_token():
    """The two-level CDF inversion against softmax in float64: a chi-square test over 20,000 draws, with a vocab
    that is not a whole number of blocks, a whole block excluded and tokens of probability ~1e-9."""
    rows, v = 20000, 700  # 3 blocks of 256, the last one padded
    logits = np.random.default_rng(0).normal(0.0, 2.0, v)
    logits[256:512] = -np.inf  # a whole block
    logits[[3, 600, v - 1]] = -np.inf
    logits[[10, 20]] = logits[np.isfinite(logits)].max() - 25.0  # p ~ 1e-11: drawable in principle only
    keys = jax.random.split(jax.random.key(7), rows)
    batch = np.broadcast_to(logits, (rows, v)).astype(np.float32)
    drawn = np.asarray(draw_tokens(keys, batch))
    assert drawn.dtype == np.int32 and np.isfinite(logits[drawn]).all()
    counts = np.bincount(drawn, minlength=v)

    def chi_square_pvalue(x):
        probs = np.exp(log_softmax(x))
        expected = probs * rows
        big = expected >= 5
        return stats.chisquare(
            np.append(counts[big], counts[~big].sum()), np.append(expected[big], expected[~big].sum())
        ).pvalue

    assert chi_square_pvalue(logits) > 1e-4  # fixed keys: a correct draw fails with probability 1e-4
    assert chi_square_pvalue(logits * 1.1) < 1e-6  # power: a 10 % temperature error is rejected
    # Each row depends on its own key and logits only (no batch coupling), and one finite token is always drawn.
    np.testing.assert_array_equal(np.asarray(draw_tokens(keys[:5], batch[:5])), drawn[:5])
    single = np.full((4, v), -np.inf, np.float32)
    single[:, 530] = 0.0
    assert np.asarray(draw_tokens(keys[:4], single)).tolist() == [530] * 4


def allowed_mask(logits, temperature, top_k, top_p, margin):
    """NumPy reference of top-k then top-p filtering. logits [..., V] -> (surely allowed, surely excluded).

    Tokens whose preceding probability mass lies within `margin` of top_p are neither (float32 vs
    float64 rounding could put them on either side).
    """
    scaled = logits / temperature
    keep = np.ones(scaled.shape, bool)
    if top_k is not None:
        kth = np.sort(scaled, axis=-1)[..., -top_k][..., None]
        keep = scaled >= kth
    if top_p is None:
        return keep, ~keep
    masked = np.where(keep, scaled, -np.inf)
    probs = np.exp(masked - masked.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    order = np.argsort(-probs, axis=-1)
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    before_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    before = np.empty_like(before_sorted)
    np.put_along_axis(before, order, before_sorted, axis=-1)
    sure = keep & (before < top_p - margin)
    excluded = ~keep | (before > top_p + margin)
    return sure, excluded


@pytest.mark.parametrize("top_k, top_p", [(5, None), (None, "mid"), (20, "mid")])
def test_top_k_top_p_never_emit_excluded_tokens(params, sampler, top_k, top_p):
    rows, steps, temperature, prompt = 512, 4, 1.5, [7, 8, 9, 10]
    first = full_logits(params, [prompt])[0, -1]
    if top_p == "mid":
        # Put top_p midway between two cumulative masses of the first step, so step 0 is exact.
        sure, _ = allowed_mask(first, temperature, top_k, None, 0.0)
        probs = np.sort(np.exp(log_softmax(np.where(sure, first / temperature, -np.inf))))[::-1]
        cumulative = np.cumsum(probs)
        top_p = float((cumulative[5] + cumulative[6]) / 2)
    out = sampler(
        params, [prompt] * rows, max_new_tokens=steps, temperature=temperature, top_k=top_k, top_p=top_p, seed=2
    )
    assert (out.lengths == steps).all()
    logits = full_logits(params, [prompt + t for t in out.tokens.tolist()])[:, len(prompt) - 1 : -1]
    sure, excluded = allowed_mask(logits, temperature, top_k, top_p, margin=1e-4)
    picked = lambda m: np.take_along_axis(m, out.tokens[..., None], axis=-1)[..., 0]
    assert not picked(excluded).any(), "sampled a token that top-k/top-p excludes"
    assert picked(sure)[:, 0].all()  # step 0 has no borderline tokens by construction
    assert picked(sure).mean() > 0.99  # borderline tokens are rare
    # The filter keeps more than one token and the rows really draw different samples.
    allowed_first = int(sure[0, 0].sum())
    assert allowed_first > 1
    assert len(set(out.tokens[:, 0].tolist())) == allowed_first


def test_sharded_matches_single_device(params, sampler):
    sharded = Sampler(CONFIG, mesh=make_mesh((2, 2, 2)), pad_id=PAD)
    assert sharded.batch_multiple == 4
    prompts = PROMPTS + [[11, 12], [250, 251, 252]]  # 6 prompts -> bucket of 8 rows, split 4 ways
    for settings in (dict(temperature=0.0), dict(temperature=0.9, top_k=30, top_p=0.95, stop_tokens=[3, 4])):
        one = sampler(params, prompts, max_new_tokens=12, seed=7, **settings)
        many = sharded(params, prompts, max_new_tokens=12, seed=7, **settings)
        np.testing.assert_array_equal(one.tokens, many.tokens)
        np.testing.assert_array_equal(one.lengths, many.lengths)
        np.testing.assert_array_equal(one.stopped, many.stopped)
        np.testing.assert_allclose(one.logprobs, many.logprobs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "mesh_shape, temperature, scan",
    [(None, 0.0, False), (None, 1.0, False), ((2, 2, 2), 1.0, False), (None, 1.0, True), ((2, 2, 2), 0.0, True)],
)
def test_compacted_decode_equals_the_lockstep_decode(params, mesh_shape, temperature, scan):
    """Rows that finish early free the batch: with `Buckets.compact_rows` a decode whose unfinished rows fit a
    quarter of its bucket stops, gathers them into the smaller bucket and resumes there. 32 rows with budgets of
    1 to 20 and two stop tokens finish over many steps, so the call runs on 32, then 8, then 2 rows (on a mesh
    whose batch splits 4 ways: 4), with a buffer per layer or the scanned layers' stacked cache (gathered a layer
    at a time). Every row's tokens, lengths, stop flags and decode steps equal the lockstep decode's (no
    compaction, one device, unscanned), its log-probs to float rounding."""
    prompts = [[(37 * i + 11 * j) % 255 + 1 for j in range(2 + i % 9)] for i in range(32)]
    budgets = [1 + (7 * i) % 20 for i in range(32)]
    settings = dict(max_new_tokens=budgets, temperature=temperature, seed=4)
    lockstep = Sampler(CONFIG, pad_id=PAD, buckets=Buckets(compact_rows=0))
    drawn = lockstep(params, prompts, **settings)  # stop on the two tokens most often drawn after the second
    later = np.concatenate([row[2:length] for row, length in zip(drawn.tokens, drawn.lengths, strict=True)])
    settings["stop_tokens"] = np.argsort(np.bincount(later, minlength=CONFIG.vocab_size))[-2:].tolist()
    mesh = make_mesh(mesh_shape) if mesh_shape else None
    config = CONFIG.replace(scan_layers=scan)
    compacted = Sampler(config, mesh=mesh, pad_id=PAD, buckets=Buckets(compact_rows=2))
    one = lockstep(params, prompts, **settings)
    two = compacted(stack_layers(params, CONFIG) if scan else params, prompts, **settings)
    smallest = 4 if mesh_shape else 2
    resumed = sorted(int(name.split()[1][2:]) for name in compacted.compile_seconds if name.startswith("resume"))
    assert resumed == [smallest, 8]  # 32 rows -> 8 (a quarter) -> the smallest bucket
    assert not [name for name in lockstep.compile_seconds if name.startswith("resume")]
    assert 0 < one.stopped.sum() < len(prompts)  # some rows end on a stop token, others on their budget
    np.testing.assert_array_equal(one.tokens, two.tokens)
    np.testing.assert_array_equal(one.lengths, two.lengths)
    np.testing.assert_array_equal(one.stopped, two.stopped)
    assert one.steps == two.steps == max(one.lengths) - 1
    np.testing.assert_allclose(one.logprobs, two.logprobs, rtol=0, atol=1e-5)


def numpy_lookup_drafts(history, known, k, ngram):
    """Reference of lookup_drafts, row by row: the k tokens after the latest earlier occurrence of the row's last n
    tokens (largest n <= ngram that occurs), never reading past its last known token (repeated beyond)."""
    out = []
    for row, m in zip(history.tolist(), known.tolist(), strict=True):
        seen, start = row[:m], m - 1
        for n in range(ngram, 0, -1):
            hits = [j + n for j in range(m - n) if m >= n and seen[j : j + n] == seen[m - n :]]
            if hits:
                start = max(hits)
                break
        out.append([seen[min(start + i, m - 1)] for i in range(k)])
    return np.asarray(out)


@pytest.mark.parametrize("ngram", [1, 2, 3])
def test_lookup_drafts_match_a_numpy_reference(ngram):
    rng = np.random.default_rng(ngram)
    history = rng.integers(1, 4, (64, 24)).astype(np.int32)  # 3 symbols: n-grams recur, and some do not
    known = rng.integers(1, 25, 64).astype(np.int32)
    known[:3] = [1, 2, 24]
    history[3, :9] = [5, 6, 7, 8, 1, 2, 5, 6, 9]  # (5, 6) recurs: the draft is what followed it, 7 8 1 2 ...
    known[3] = 8
    got = np.asarray(jax.jit(lookup_drafts, static_argnums=(2, 3))(history, known, 5, ngram))
    np.testing.assert_array_equal(got, numpy_lookup_drafts(history, known, 5, ngram))
    if ngram >= 2:
        np.testing.assert_array_equal(got[3], [7, 8, 1, 2, 5])


def test_lookup_decode_is_greedy_decode_in_fewer_steps(params):
    """Greedy decoding with prompt-lookup drafts emits the lockstep greedy tokens. Each row's history starts with
    a copy of its own greedy continuation (after its prompt's last token), so most drafts are right and a model step
    emits up to k + 1 tokens: as many steps as a NumPy replay of the drafting, fewer than the lockstep decode's N - 1;
    with stop tokens drawn mid-continuation, rows end where the lockstep decode ends them."""
    prompts = [[(37 * i + 11 * j) % 255 + 1 for j in range(2 + i % 9)] for i in range(8)]
    lockstep = Sampler(CONFIG, pad_id=PAD, buckets=Buckets(compact_rows=0))
    n, k = 16, 4
    reference = lockstep(params, prompts, max_new_tokens=n, temperature=0.0)
    for stops, budgets in (([], [n] * 8), ([int(reference.tokens[0, 6]), int(reference.tokens[5, 9])], [n] * 8),
                           ([], [1 + 2 * i for i in range(8)])):  # fmt: skip
        expected = lockstep(params, prompts, max_new_tokens=budgets, temperature=0.0, stop_tokens=stops)
        batch = lockstep.prepare(prompts, budgets, stops)
        p = batch["prompt"].shape[1]
        logits, prefix = prefill_prompts(CONFIG, params, batch["prompt"], batch["prompt_mask"])
        cache = init_cache(CONFIG, 8, p + (k + 1) * n)
        cache, logits = rows_from_prefix(prefix, logits, batch["rows"], cache)
        history = np.zeros((8, 2 * n + 1 + p + n), np.int32)
        known = np.zeros(8, np.int32)
        for i, prompt in enumerate(prompts):  # [last prompt token, its continuation] + the prompt
            seen = [prompt[-1], *reference.tokens[i].tolist(), *prompt]
            history[i, : len(seen)], known[i] = seen, len(seen)
        state = {**decode_state(cache, batch["max_new"], n), "history": history, "known": known}
        run = jax.jit(lambda s, lg, budget, stop: lookup_decode_loop(CONFIG, params, s, budget, stop, lg,
                                                                     num_drafts=k))  # fmt: skip
        out = run(state, logits, batch["max_new"], batch["stop_tokens"])
        lengths = np.asarray(out["lengths"])
        np.testing.assert_array_equal(lengths, expected.lengths)
        np.testing.assert_array_equal(np.asarray(out["tokens"])[:, : expected.tokens.shape[1]], expected.tokens)
        np.testing.assert_array_equal(np.asarray(out["stopped"]), expected.stopped)
        np.testing.assert_allclose(
            np.asarray(out["logprobs"])[:, : expected.tokens.shape[1]], expected.logprobs, rtol=0, atol=1e-5
        )
        # The model steps a NumPy replay of the drafting takes: each step emits the drafts that agree with the
        # greedy tokens, then one more; the loop runs until the slowest row is done.
        steps, inside = [], []
        for i, length in enumerate(lengths.tolist()):
            seen, emitted, taken = history[i, : known[i]].tolist() + [int(expected.tokens[i, 0])], 1, 0
            while emitted < length:
                drafts = numpy_lookup_drafts(np.asarray([seen]), np.asarray([len(seen)]), k, 2)[0].tolist()
                agree = 0
                while agree < k and emitted + agree < length and drafts[agree] == expected.tokens[i, emitted + agree]:
                    agree += 1
                new = expected.tokens[i, emitted : min(emitted + agree + 1, length)].tolist()
                seen, emitted, taken = seen + new, emitted + len(new), taken + 1
            steps.append(taken)
            inside.append(bool(expected.stopped[i]) and len(new) >= 2)  # its stop token after a step's first token
        assert int(out["step"]) - 1 == max(steps) < expected.steps
        if stops:
            assert any(inside)  # a row stops on an accepted draft, so the tokens drafted after it are dropped


def filtered_probs(logits, temperature, top_k, top_p):
    """NumPy reference of the sampling distribution [..., V] (float64): tempered, top-k, then top-p (no ties)."""
    scaled = logits / temperature
    keep = np.ones(scaled.shape, bool)
    if top_k is not None:
        keep = scaled >= np.sort(scaled, axis=-1)[..., -top_k][..., None]
    probs = np.exp(log_softmax(np.where(keep, scaled, -np.inf)))
    if top_p is not None:
        order = np.argsort(-probs, axis=-1)
        ranked = np.take_along_axis(probs, order, axis=-1)
        before = np.empty_like(ranked)
        np.put_along_axis(before, order, np.cumsum(ranked, axis=-1) - ranked, axis=-1)
        probs = np.where(before < top_p, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def chi_square_pvalue(counts, probs):
    """Chi-square p-value of counts [n] against probabilities [n], rare bins (expected < 5) pooled."""
    expected = probs * counts.sum()
    big = expected >= 5
    observed, expected = counts[big], expected[big]
    if (~big).any() and probs[~big].sum() > 0:
        observed, expected = (
            np.append(observed, counts[~big].sum()),
            np.append(expected, probs[~big].sum() * counts.sum()),
        )
    return stats.chisquare(observed, expected).pvalue


@pytest.mark.parametrize("top_k, top_p", [(None, None), (4, None), (None, 0.9)])
def test_speculate_tokens_emit_each_positions_distribution(top_k, top_p):
    """Speculative checking of point-mass drafts, 20,000 rows of the same logits (V = 7, k = 3): each emitted token
    follows its position's filtered, tempered distribution given the drafts before it were emitted (chi-square
    against NumPy in float64); a draft the filter excludes is never accepted; a rejected position never emits its
    draft, so m counts the leading positions that emit their drafts; and greedy checking keeps drafts while they
    equal the argmax."""
    rows, v, k, temperature = 20000, 7, 3, 0.8
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 1.5, (k + 1, v)).astype(np.float32)
    probs = filtered_probs(logits.astype(np.float64), temperature, top_k, top_p)
    # Drafts: position 0's likeliest token, position 1's second likeliest, position 2's least likely (filtered out
    # where a filter is on).
    drafts = np.asarray([np.argsort(-probs[0])[0], np.argsort(-probs[1])[1], np.argmin(logits[2])], np.int32)
    keys = jax.random.split(jax.random.key(3), rows * (k + 1)).reshape(rows, k + 1)
    run = jax.jit(lambda lg, d, keys, t: speculate_tokens(lg, d, keys, t, 1.0 if top_p is None else top_p,
                                                          top_k=top_k, use_top_p=top_p is not None))  # fmt: skip
    batch_logits, batch_drafts = np.broadcast_to(logits, (rows, k + 1, v)), np.broadcast_to(drafts, (rows, k))
    tokens, accepted = (np.asarray(x) for x in run(batch_logits, batch_drafts, keys, np.float32(temperature)))
    leading = np.cumprod(tokens[:, :k] == drafts[None, :], axis=1).sum(axis=1)
    np.testing.assert_array_equal(accepted, leading)
    for j in range(k + 1):
        emitted = tokens[accepted >= j, j]  # rows whose position j emits (drafts 1..j accepted)
        if j == 3 and emitted.size == 0:
            assert top_k is not None or top_p is not None or probs[2, drafts[2]] < 1e-3
            continue
        counts = np.bincount(emitted, minlength=v)
        assert (counts[probs[j] == 0] == 0).all()
        assert chi_square_pvalue(counts, probs[j]) > 1e-4  # fixed keys: a correct check fails with probability 1e-4
    # Power: a rejection that drew from p_0 again (its draft not removed) would be rejected.
    counts = np.bincount(tokens[:, 0], minlength=v)
    chance = probs[0, drafts[0]]
    assert chi_square_pvalue(counts, (1 - chance) * probs[0] + chance * (np.arange(v) == drafts[0])) < 1e-6
    if top_k is not None or top_p is not None:
        assert not (accepted >= 3).any()  # the filtered-out draft
    greedy_tokens, greedy_accepted = (np.asarray(x) for x in run(batch_logits[:2], batch_drafts[:2], keys[:2], 0.0))
    np.testing.assert_array_equal(greedy_tokens, np.broadcast_to(logits.argmax(-1), (2, k + 1)))
    agree = np.cumprod(drafts == logits.argmax(-1)[:k]).sum()
    np.testing.assert_array_equal(greedy_accepted, [agree, agree])


def test_sampled_lookup_decode_follows_the_model():
    """`Buckets.lookup_sampled`: a sampled call decodes with lookup drafts checked by speculative sampling, and its
    rows' first three tokens follow the model's tempered distribution (a chi-square over the 512 triples of a
    vocab of 8, exact probabilities from teacher-forced logits in float64); the log-probs are the teacher-forced
    ones; drafts were accepted (some rows emitted tokens 2-3 in one model step); a row's tokens depend on its id,
    not on the device layout, scanned layers or its batch; and a greedy call equals the lockstep decode."""
    config = CONFIG.replace(vocab_size=8)
    params = init_params(config, jax.random.key(4))
    rows, temperature, prompt = 4096, 0.7, [1, 2, 3, 1, 2, 3, 1, 2]
    buckets = Buckets(lookup_tokens=3, lookup_sampled=True, lookup_max_rows=rows, min_new_tokens=LOOKUP_MIN_STEPS)
    lookup = Sampler(config, pad_id=PAD, buckets=buckets)
    settings = dict(max_new_tokens=3, temperature=temperature, seed=9)
    out = lookup(params, [prompt] * rows, **settings)
    assert [name.split()[0] for name in lookup.compile_seconds].count("lookup") == 1
    first = np.asarray(forward(config, params, np.asarray([prompt])), np.float64)[0, -1]
    pairs = np.asarray([prompt + [a] for a in range(8)], np.int32)
    second = np.asarray(forward(config, params, pairs), np.float64)[:, -1]  # [8, V]
    triples = np.asarray([prompt + [a, b] for a in range(8) for b in range(8)], np.int32)
    third = np.asarray(forward(config, params, triples), np.float64)[:, -1].reshape(8, 8, 8)
    p = lambda x: np.exp(log_softmax(x / temperature))
    joint = p(first)[:, None, None] * p(second)[:, :, None] * p(third)  # P(t1, t2, t3)
    counts = np.bincount(out.tokens[:, 0] * 64 + out.tokens[:, 1] * 8 + out.tokens[:, 2], minlength=512)
    assert chi_square_pvalue(counts, joint.reshape(-1)) > 1e-4  # fixed seed: fails with probability 1e-4
    untempered = (np.exp(log_softmax(first))[:, None, None] * np.exp(log_softmax(second))[:, :, None]
                  * np.exp(log_softmax(third)))  # fmt: skip
    assert chi_square_pvalue(counts, untempered.reshape(-1)) < 1e-6  # power
    booked = np.log(joint[out.tokens[:, 0], out.tokens[:, 1], out.tokens[:, 2]])
    np.testing.assert_allclose(out.logprobs.sum(axis=1), booked, rtol=0, atol=1e-4)
    assert out.steps == 2  # the first token, then one model step (rows that accepted both drafts) or two
    # Drafts: after t1, the history's last bigram (2, t1) occurs earlier iff t1 == 3; its draft is then 1 (and 2).
    drafted = (out.tokens[:, 0] == 3) & (out.tokens[:, 1] == 1)
    assert drafted.sum() > 0
    # The same rows on a mesh and with scanned layers; a row keeps its tokens in a smaller call (its ids).
    for mesh, scan in (((2, 2, 2), False), (None, True)):
        other = Sampler(config.replace(scan_layers=scan), mesh=make_mesh(mesh) if mesh else None, pad_id=PAD,
                        buckets=buckets)  # fmt: skip
        weights = stack_layers(params, config) if scan else params
        again = other(weights, [prompt] * 64, **settings, row_ids=list(range(100, 164)))
        np.testing.assert_array_equal(again.tokens, out.tokens[100:164])
    greedy = dict(max_new_tokens=LOOKUP_MIN_STEPS, temperature=0.0)
    lockstep = Sampler(config, pad_id=PAD, buckets=Buckets(compact_rows=0))
    np.testing.assert_array_equal(
        lookup(params, [prompt] * 4, **greedy).tokens, lockstep(params, [prompt] * 4, **greedy).tokens
    )


@pytest.mark.parametrize("mesh_shape, scan", [(None, False), ((2, 2, 2), False), (None, True)])
def test_sampler_lookup_decode_equals_the_lockstep_decode(params, mesh_shape, scan):
    """`Buckets.lookup_tokens`: a greedy call decodes with prompt-lookup drafts (its own program) and returns the
    lockstep decode's tokens, lengths and stop flags (log-probs to float rounding), on one device, on a mesh and with
    scanned layers; prompts that repeat themselves give the drafts something to find. Sampled calls are unchanged."""
    prompts = [[(37 * i + 11 * j) % 255 + 1 for j in range(2 + i % 9)] * 3 for i in range(12)]
    budgets = [LOOKUP_MIN_STEPS - 20 + (7 * i) % 30 for i in range(12)]  # a budget bucket of 2 x LOOKUP_MIN_STEPS
    lockstep = Sampler(CONFIG, pad_id=PAD, buckets=Buckets(compact_rows=0))
    mesh = make_mesh(mesh_shape) if mesh_shape else None
    # Prefill parts too (prompts of 6-30 tokens: length buckets 16 and 32): drafts read each row's placed prompt.
    buckets = Buckets(lookup_tokens=3, prefill_parts=3)
    lookup = Sampler(CONFIG.replace(scan_layers=scan), mesh=mesh, pad_id=PAD, buckets=buckets)
    weights = stack_layers(params, CONFIG) if scan else params
    drawn = lockstep(params, prompts, max_new_tokens=budgets, temperature=0.0)
    later = np.concatenate([row[2:length] for row, length in zip(drawn.tokens, drawn.lengths, strict=True)])
    stops = np.argsort(np.bincount(later, minlength=CONFIG.vocab_size))[-2:].tolist()
    for temperature in (0.0, 1.0):
        settings = dict(max_new_tokens=budgets, temperature=temperature, seed=3, stop_tokens=stops)
        one, two = lockstep(params, prompts, **settings), lookup(weights, prompts, **settings)
        np.testing.assert_array_equal(one.tokens, two.tokens)
        np.testing.assert_array_equal(one.lengths, two.lengths)
        np.testing.assert_array_equal(one.stopped, two.stopped)
        np.testing.assert_allclose(one.logprobs, two.logprobs, rtol=0, atol=1e-5)
        if temperature == 0:
            assert two.steps < one.steps  # drafts were accepted: a step emitted several tokens
    assert 0 < one.stopped.sum() < len(prompts)
    assert [name.split()[0] for name in lookup.compile_seconds].count("lookup") == 1  # greedy only
    assert len(lookup.prepare(prompts, budgets)["parts"]) == (1 if mesh_shape else 2)  # a split batch: one prefill
    # A wider greedy call (a batch bucket above LOOKUP_MAX_ROWS, where a step of B x (k + 1) positions costs more
    # than its drafts save) and one of a short budget (answers, not copies) decode in lockstep.
    wide = LOOKUP_MAX_ROWS + 1
    lookup(weights, (prompts * wide)[:wide], max_new_tokens=LOOKUP_MIN_STEPS, temperature=0.0)
    lookup(weights, prompts[:4], max_new_tokens=LOOKUP_MIN_STEPS // 2, temperature=0.0)
    assert [name.split()[0] for name in lookup.compile_seconds].count("lookup") == 1
    assert any(name.startswith(f"decode B={2 * LOOKUP_MAX_ROWS} ") for name in lookup.compile_seconds)
    assert any(name.startswith("decode B=4 ") for name in lookup.compile_seconds)


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_scanned_layers_sample_the_same_tokens(params, sampler, mesh_shape):
    """Scanned layers carry the stacked KV cache through the scan (memtrain_jax/model/transformer.py); greedy
    and sampled rollouts, shared prefixes included, are the unscanned ones token for token."""
    mesh = make_mesh(mesh_shape) if mesh_shape else None  # None: one device
    scanned = Sampler(CONFIG.replace(scan_layers=True), mesh=mesh, pad_id=PAD)
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[2], PROMPTS[0]]
    for settings in (dict(temperature=0.0), dict(temperature=0.9, top_k=30, stop_tokens=[3, 4])):
        plain = sampler(params, prompts, max_new_tokens=12, seed=5, **settings)
        stacked = scanned(stack_layers(params, CONFIG), prompts, max_new_tokens=12, seed=5, **settings)
        np.testing.assert_array_equal(stacked.tokens, plain.tokens)
        np.testing.assert_array_equal(stacked.lengths, plain.lengths)
        np.testing.assert_allclose(stacked.logprobs, plain.logprobs, rtol=0, atol=1e-5)


def test_scanned_decode_does_not_copy_the_stacked_cache():
    """The decode program's temporaries with scanned layers stay below two layers' keys and values: the stacked
    [L, B, K, S, D] cache is updated in place, not sliced and re-stacked every step (which held a whole
    cache's copy, 12.5 MiB here against a 10 MiB cache, before the cache moved into the scan's carry)."""
    config = CONFIG.replace(num_layers=8, hidden_size=128, intermediate_size=256, num_heads=4, head_dim=32)
    rows, prompt, steps = 8, 256, 64
    layer_kv = 2 * rows * config.num_kv_heads * (prompt + steps) * config.head_dim * 4  # float32 k and v
    for scan in (False, True):
        lowered = Sampler(config.replace(scan_layers=scan)).lower_programs(rows, 2, prompt, steps)["decode"]
        memory = lowered.compile().memory_analysis()
        assert memory.alias_size_in_bytes >= config.num_layers * layer_kv  # the donated cache is the output
        assert memory.temp_size_in_bytes < 2 * layer_kv, (scan, memory.temp_size_in_bytes, layer_kv)


def test_same_bucket_compiles_nothing(params):
    fresh = Sampler(CONFIG, buckets=Buckets(min_batch=4, min_prompt_length=16, min_new_tokens=16))
    fresh(params, PROMPTS[:3], max_new_tokens=5, temperature=0.5, top_p=0.9, stop_tokens=[7], seed=1)
    compiled = fresh.compile_count
    assert compiled > 0
    # New prompts, lengths, batch size, budget, temperature, top_p, stop tokens and seed, same buckets.
    fresh(
        params,
        [[1, 2], [3] * 16, [4, 5, 6], [7]],
        max_new_tokens=16,
        temperature=1.2,
        top_p=0.5,
        stop_tokens=[3, 9, 11],
        seed=9,
    )
    fresh(params, [[8, 9, 10]], max_new_tokens=[2], temperature=0.0, top_p=0.3, stop_tokens=[[1, 2, 3, 4]], seed=2)
    assert fresh.compile_count == compiled
    # A bigger budget leaves the bucket: exactly one new sampling program and one cache allocator.
    fresh(params, PROMPTS[:3], max_new_tokens=17, temperature=0.5, top_p=0.9, seed=1)
    assert fresh.compile_count == compiled + 2


def test_calls_that_differ_only_in_distinct_prompts_share_one_decode_program(params):
    """The decode program (the model's loop: the costly trace) is keyed by rows, cache slots and budget, not by
    the number of distinct prompts prefilled: 8 rows of 2 prompts, then 8 rows of 8 prompts in the same length
    bucket, compile a new prefill and rows program, and no decode; the second call's rows decode as the
    full-forward reference does."""
    fresh = Sampler(CONFIG, buckets=Buckets(min_batch=4, min_prompt_length=16, min_new_tokens=16))
    few = [PROMPTS[0]] * 4 + [PROMPTS[1]] * 4
    many = [[i + 1, *PROMPTS[i % 4]] for i in range(8)]
    fresh(params, few, max_new_tokens=6)
    first = set(fresh.compile_seconds)
    out = fresh(params, many, max_new_tokens=6)
    assert set(fresh.compile_seconds) - first == {"prefill U=8 P=16", "rows B=8 U=8 P=16 S=32"}
    assert [name for name in first if name.startswith("decode")] == ["decode B=8 S=32 N=16"]
    assert fresh.compile_count == len(first) + 2
    assert out.tokens.tolist() == reference_greedy(params, many, 6)


def test_early_stop_padding_lengths_and_loop_exit(params, sampler):
    ref = reference_greedy(params, PROMPTS, 16)
    first_index = lambda row, token: ref[row].index(token)
    stops = [
        [ref[0][4], ref[0][2]],  # several stop tokens: the first to appear ends the row
        [t for t in range(CONFIG.vocab_size) if t not in ref[1]][:2],  # never generated: runs to its budget
        [ref[2][6]],
        [ref[3][1]],
    ]
    budgets = [16, 13, 16, 16]
    out = sampler(params, PROMPTS, max_new_tokens=budgets, stop_tokens=stops)
    expected_lengths = [
        min(first_index(0, ref[0][4]), first_index(0, ref[0][2])) + 1,
        13,
        first_index(2, ref[2][6]) + 1,
        first_index(3, ref[3][1]) + 1,
    ]
    np.testing.assert_array_equal(out.lengths, expected_lengths)
    np.testing.assert_array_equal(out.stopped, [True, False, True, True])
    for i, n in enumerate(expected_lengths):
        assert out.tokens[i, :n].tolist() == ref[i][:n]
        assert (out.tokens[i, n:] == PAD).all() and (out.logprobs[i, n:] == 0).all()
        assert (out.logprobs[i, :n] < 0).all()
    assert out.steps == max(expected_lengths) - 1

    # Every row stops early: the loop exits well before the 16-token budget.
    early = [[ref[i][1]] for i in range(len(PROMPTS))]
    out = sampler(params, PROMPTS, max_new_tokens=16, stop_tokens=early)
    lengths = [first_index(i, ref[i][1]) + 1 for i in range(len(PROMPTS))]
    np.testing.assert_array_equal(out.lengths, lengths)
    assert out.stopped.all()
    assert out.steps == max(lengths) - 1 < 15

    results = generate(CONFIG, params, PROMPTS, max_new_tokens=16, stop_tokens=[ref[0][2]])
    assert results[0].tokens == ref[0][: first_index(0, ref[0][2]) + 1] and results[0].stopped


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[[1], []]), "Prompt 1 is empty"),
        (dict(prompts=[[1, 256]]), r"outside \[0, 256\)"),
        (dict(temperature=-1.0), "temperature must be"),
        (dict(top_p=0.0), "top_p must be"),
        (dict(top_k=0), "top_k must be"),
        (dict(max_new_tokens=[1, 2]), "2 entries for 1 prompts"),
        (dict(stop_tokens=[[1], [2]]), "2 rows for 1 prompts"),
        (dict(prompts=[]), "prompts is empty"),
    ],
)
def test_bad_input_raises_clear_error(params, sampler, kwargs, message):
    call = dict(prompts=[[1, 2]], max_new_tokens=2) | kwargs
    with pytest.raises(ValueError, match=message):
        sampler(params, call.pop("prompts"), **call)


@pytest.mark.parametrize(
    "n, minimum, multiple, expected",
    [(1, 1, 1, 1), (3, 1, 1, 4), (4, 4, 1, 4), (5, 4, 1, 8), (17, 16, 1, 32), (3, 1, 6, 6)],
)
def test_bucket_rounding(n, minimum, multiple, expected):
    assert Buckets.round_up(n, minimum, multiple) == expected


def test_row_samples_do_not_depend_on_batch_padding(params, sampler):
    settings = dict(max_new_tokens=6, temperature=1.0, top_k=50, seed=4)
    alone = sampler(params, PROMPTS[:1], **settings)
    with_others = sampler(params, PROMPTS[:3], **settings)  # a bigger batch bucket, same row 0
    np.testing.assert_array_equal(alone.tokens[0], with_others.tokens[0])
    np.testing.assert_allclose(alone.logprobs[0], with_others.logprobs[0], rtol=0, atol=1e-5)


def test_a_rows_sample_is_keyed_by_its_row_id_not_its_position(params, sampler):
    """row_ids: a row's sample is a function of (seed, row id, prompt), wherever the row sits in the call;
    no ids means ids 0..n-1; another id gives another sample."""
    settings = dict(max_new_tokens=8, temperature=1.0, seed=4)
    ids = [7, 1_000_003, 2**40 + 5]
    batch = sampler(params, PROMPTS[:3], row_ids=ids, **settings)
    for i in range(3):  # the same row alone, or moved among other rows under other ids
        moved = sampler(params, [PROMPTS[2], PROMPTS[i], PROMPTS[1]], row_ids=[9, ids[i], 3], **settings)
        np.testing.assert_array_equal(moved.tokens[1], batch.tokens[i])
        alone = sampler(params, PROMPTS[i : i + 1], row_ids=[ids[i]], **settings)
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[i])
    default = sampler(params, PROMPTS[:3], **settings)
    np.testing.assert_array_equal(default.tokens, sampler(params, PROMPTS[:3], row_ids=[0, 1, 2], **settings).tokens)
    other = sampler(params, PROMPTS[:1], row_ids=[8], **settings)
    assert not np.array_equal(other.tokens[0], batch.tokens[0])
    with pytest.raises(ValueError, match="row_ids must be 3 ints >= 0"):
        sampler(params, PROMPTS[:3], row_ids=[0, 1], **settings)
    with pytest.raises(ValueError, match="row_ids must be 1 ints >= 0"):
        sampler(params, PROMPTS[:1], row_ids=[-1], **settings)


# ------------------------------------------------------------------------------------------------
# Shared prefixes, tight buckets, blocked attention across several blocks


def test_traceable_sample_from_prefix_equals_sample_of_every_row(params):
    """The traceable building blocks (what the Sampler's programs are made of): decoding rows from a shared
    prefill (`prefill_prompts` + `sample_from_prefix`, i.e. `rows_from_prefix` + `decode`) gives each row what
    `sample` gives when every row prefills its own prompt, random draws included."""
    distinct, rows = [PROMPTS[1], PROMPTS[0]], np.array([0, 1, 0, 0], np.int32)
    p, steps = 16, 8
    pad = lambda qs: (
        np.array([[PAD] * (p - len(q)) + q for q in qs], np.int32),
        np.array([[False] * (p - len(q)) + [True] * len(q) for q in qs]),
    )
    max_new, stops = np.full(4, steps, np.int32), np.full((4, 4), -1, np.int32)
    rng, temperature, top_p = jax.random.key(7), np.float32(0.9), np.float32(1.0)
    logits, prefix = prefill_prompts(CONFIG, params, *pad(distinct))
    shared, _ = sample_from_prefix(
        CONFIG, params, prefix, logits, rows, init_cache(CONFIG, 4, p + steps), rng, max_new, stops, temperature,
        top_p, num_steps=steps,
    )  # fmt: skip
    own, _ = sample(
        CONFIG, params, init_cache(CONFIG, 4, p + steps), *pad([distinct[r] for r in rows]), rng, max_new, stops,
        temperature, top_p, num_steps=steps,
    )  # fmt: skip
    np.testing.assert_array_equal(shared.tokens, own.tokens)
    np.testing.assert_allclose(shared.logprobs, own.logprobs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=0.9, top_k=30, stop_tokens=[3, 4])])
def test_shared_prefixes_equal_per_row_prefill(params, sampler, settings):
    """Rows with identical prompts (a first turn's G1 rollouts, a probe's G2 samples) are prefilled once;
    every row's result is what prefilling it alone gives, including its own random draws."""
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[3], PROMPTS[0]]
    shared = sampler(params, prompts, max_new_tokens=10, seed=3, share_prefixes=True, **settings)
    alone = sampler(params, prompts, max_new_tokens=10, seed=3, share_prefixes=False, **settings)
    np.testing.assert_array_equal(shared.tokens, alone.tokens)
    np.testing.assert_array_equal(shared.lengths, alone.lengths)
    np.testing.assert_array_equal(shared.stopped, alone.stopped)
    np.testing.assert_allclose(shared.logprobs, alone.logprobs, rtol=0, atol=1e-5)
    if settings["temperature"] > 0:  # the copies of one prompt draw independently
        assert len({tuple(shared.tokens[i]) for i in (0, 2, 3)}) > 1
    assert any(name.startswith("prefill U=4 ") for name in sampler.compile_seconds)  # 3 distinct prompts
    assert any(name.startswith("prefill U=8 ") for name in sampler.compile_seconds)  # 6 rows, unshared
    batch = sampler.prepare(prompts, 10, share_prefixes=True)
    assert batch["prompt"].shape[0] == 4 and batch["rows"][:6].tolist() == [0, 1, 0, 0, 2, 1]


def test_prompts_across_attention_blocks_match_reference(params):
    """Small attention blocks and length buckets: prompts span several blocks and ragged buckets;
    greedy tokens equal the full-recompute loop and log-probs equal the dense reference's teacher forcing."""
    config = CONFIG.replace(attention_block_q=8, attention_block_kv=8)
    blocked = Sampler(config, buckets=Buckets(length_block=16, min_prompt_length=4, min_new_tokens=4))
    rng = np.random.default_rng(5)
    prompts = [rng.integers(1, CONFIG.vocab_size, size=n).tolist() for n in (37, 5, 20)]
    out = blocked(params, prompts, max_new_tokens=12)
    assert blocked.prepare(prompts, 12)["prompt"].shape[1] == 48  # tight: 3 blocks of 16, not 64
    assert [t.tolist() for t in out.tokens] == reference_greedy(params, prompts, 12)
    dense = CONFIG.replace(attention="reference")
    sequences = [p + out.tokens[i].tolist() for i, p in enumerate(prompts)]
    length = max(len(s) for s in sequences)
    tokens = np.zeros((len(sequences), length), np.int32)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = s
    logp = log_softmax(np.asarray(forward(dense, params, tokens), np.float64))
    for i, prompt in enumerate(prompts):
        positions = len(prompt) - 1 + np.arange(12)
        np.testing.assert_allclose(out.logprobs[i], logp[i, positions, out.tokens[i]], rtol=0, atol=1e-5)


def compositions(n, parts):
    """Every way to cut n ordered items into at most `parts` non-empty runs (their counts)."""
    if n == 0:
        yield []
        return
    if parts == 0:
        return
    for first in range(1, n + 1):
        for rest in compositions(n - first, parts - 1):
            yield [first, *rest]


@pytest.mark.parametrize("seed", range(6))
def test_split_prefill_is_the_cheapest_split(seed):
    """`split_prefill` against brute force over every split of prompts (longest first) into at most 1-4 parts: its
    split computes the fewest slots (batch bucket x longest prompt's length bucket + PART_COST_SLOTS a part), and is
    one part whenever one part is as cheap."""
    rng = np.random.default_rng(seed)
    buckets = Buckets(length_block=64)
    size = lambda count: buckets.round_up(count, 1, 1 + seed % 2)  # seeds 1, 3, 5: batches split over 2 shards
    length = lambda tokens: buckets.round_length(tokens, 16)
    for _ in range(20):
        lengths = sorted(rng.integers(5, 500, size=rng.integers(1, 11)).tolist(), reverse=True)
        for max_parts in (1, 2, 3, 4):

            def cost(counts, lengths=lengths):
                starts = np.cumsum([0, *counts[:-1]])
                return sum(size(c) * length(lengths[s]) + PART_COST_SLOTS for c, s in zip(counts, starts, strict=True))

            counts = split_prefill(lengths, max_parts, size, length)
            best = min(cost(c) for c in compositions(len(lengths), max_parts))
            assert sum(counts) == len(lengths) and len(counts) <= max_parts
            assert cost(counts) == best
            if cost([len(lengths)]) == best:
                assert counts == [len(lengths)]
    with pytest.raises(ValueError, match="sorted longest first"):
        split_prefill([3, 5], 2, size, length)


def test_placed_parts_are_the_prefix_of_one_prefill(params):
    """`place_prefix`: prompts prefilled in two parts of their own length buckets (32 and 16 slots) and placed into
    an empty prefix of 4 rows and 32 slots give one prefill's mask exactly, and its keys, values (at every valid
    slot: each part's prompts end at the last slot) and next-token logits to float rounding."""
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, CONFIG.vocab_size, size=n).tolist() for n in (30, 21, 12, 7)]

    def padded(rows, slots):
        tokens, mask = np.zeros((len(rows), slots), np.int32), np.zeros((len(rows), slots), bool)
        for i, q in enumerate(rows):
            tokens[i, slots - len(q) :], mask[i, slots - len(q) :] = q, True
        return tokens, mask

    logits, prefix = prefill_prompts(CONFIG, params, *padded(prompts, 32))
    placed = {**init_cache(CONFIG, 4, 32), "index": np.int32(32)}
    placed_logits = np.zeros_like(logits)
    for first, rows, slots in ((0, 2, 32), (2, 2, 16)):
        part_logits, part = prefill_prompts(CONFIG, params, *padded(prompts[first : first + rows], slots))
        placed, placed_logits = place_prefix(placed, placed_logits, part, part_logits, np.int32(first))
    valid = np.asarray(prefix["mask"])
    np.testing.assert_array_equal(np.asarray(placed["mask"]), valid)
    assert int(placed["index"]) == int(prefix["index"]) == 32
    for key in ("k", "v"):
        for one, two in zip(prefix[key], placed[key], strict=True):  # [B, K, S, D] a layer
            one, two = np.moveaxis(np.asarray(one), 2, 1), np.moveaxis(np.asarray(two), 2, 1)  # [B, S, K, D]
            np.testing.assert_allclose(two[valid], one[valid], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(placed_logits), np.asarray(logits), rtol=0, atol=1e-4)


@pytest.mark.parametrize("mesh, scan", [("one", False), ("tensor", False), ("one", True)])
def test_prefill_parts_equal_one_prefill(params, mesh, scan):
    """`Buckets.prefill_parts`: prompts of 3 to 60 tokens (length buckets of 16) are prefilled in parts of their
    own batch and length buckets and placed into the call's prefix; every row's greedy and sampled tokens, lengths
    and stop flags equal one prefill of all (log-probs to float rounding), on one device, with the model split over
    2 devices and with scanned layers, shared prompts and unshared included. A batch split over devices prefills
    once (placing at a row offset of a sharded axis would gather the prefix onto every device)."""
    rng = np.random.default_rng(7)
    distinct = [rng.integers(1, CONFIG.vocab_size, size=n).tolist() for n in (60, 3, 33, 47, 5, 18, 9, 58, 4, 21)]
    prompts = distinct + distinct[:6]  # rows sharing a prompt (a probe's samples) share its part's prefill
    buckets = dict(length_block=16, min_prompt_length=4, compact_rows=0)
    one = Sampler(CONFIG, pad_id=PAD, buckets=Buckets(**buckets))
    devices = make_mesh((1, 1, 2), devices=jax.devices()[:2]) if mesh == "tensor" else None
    config = CONFIG.replace(scan_layers=scan)
    parts = Sampler(config, mesh=devices, pad_id=PAD, buckets=Buckets(prefill_parts=3, **buckets))
    weights = stack_layers(params, CONFIG) if scan else params
    layout = parts.prepare(prompts, 8)["parts"]
    assert len(layout) > 1 and layout[0, 2] == 64 and layout[-1, 2] < 64  # parts of shorter length buckets
    assert layout[:, 1].sum() <= 16
    for settings in (
        dict(temperature=0.0),
        dict(temperature=1.0, stop_tokens=[3, 4], seed=5),
        dict(temperature=1.0, seed=6, share_prefixes=False),
    ):
        a, b = one(params, prompts, max_new_tokens=8, **settings), parts(weights, prompts, max_new_tokens=8, **settings)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(a.stopped, b.stopped)
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
    assert [name.split()[0] for name in parts.compile_seconds].count("place") >= len(layout)
    assert not [name for name in one.compile_seconds if name.startswith("place")]
    split_batch = Sampler(CONFIG, mesh=make_mesh((2, 2, 2)), pad_id=PAD, buckets=Buckets(prefill_parts=3, **buckets))
    assert split_batch.prepare(prompts, 8)["parts"].tolist() == [[0, 16, 64]]


@pytest.mark.parametrize(
    "n, expected, coarse", [(3, 16, 16), (200, 256, 256), (257, 512, 512), (5200, 5376, 8192), (7168, 7168, 8192)]
)
def test_tight_length_buckets(n, expected, coarse):
    buckets = Buckets()  # length_block 256, min_prompt_length 16
    assert buckets.round_length(n, 16) == expected
    assert buckets.coarse_length(n, 16) == coarse


@pytest.mark.parametrize(
    "spec, block, expected, parts", [("memtrain.py:paper", 256, 512, 1), ("memtrain.py:cpu", 64, 320, 4)]
)
def test_a_runs_buckets_follow_sampling_length_block(spec, block, expected, parts):
    """A 260-token prompt: 512 slots in 256-token blocks (the paper), 320 in the CPU variants' 64-token blocks; a
    stored config from before the field (no `sampling.length_block`) keeps the old 256-token blocks. Prefill parts:
    4 in the CPU variants, 1 (one prefill) in the paper's and in a stored config from before the field."""
    config = load_config(spec)
    assert Buckets.from_config(config).length_block == block
    assert Buckets.from_config(config).round_length(260, 16) == expected
    assert Buckets.from_config(config).prefill_parts == parts
    del config.sampling["length_block"], config.sampling["prefill_parts"]
    assert Buckets.from_config(config).round_length(260, 16) == 512
    assert Buckets.from_config(config).prefill_parts == 1


def test_length_bucket_cap():
    capped = Sampler(CONFIG, buckets=Buckets(length_block=16, max_length_buckets=2, min_prompt_length=4))
    length = lambda n: capped.prepare([[1] * n], 1)["prompt"].shape[1]
    assert [length(20), length(40)] == [32, 48]  # two tight buckets: the cap
    assert length(60) == 64  # no known bucket fits: a power-of-two number of blocks
    assert [length(25), length(33), length(50), length(20)] == [32, 48, 64, 32]  # known buckets are reused
    assert length(70) == 128


@pytest.mark.parametrize(
    "field, value, least",
    [
        ("length_block", 0, 1),
        ("max_length_buckets", -1, 1),
        ("min_batch", 2.0, 1),
        ("compact_rows", -1, 0),
        ("lookup_tokens", -2, 0),
        ("prefill_parts", 0, 1),
    ],
)
def test_buckets_reject_bad_values(field, value, least):
    with pytest.raises(ValueError, match=f"Buckets.{field} must be an int >= {least}, got {value!r}"):
        Buckets(**{field: value})
