"""Grain pipeline: prepared-data cache, episode contents, per-host sharding, exact resume,
worker processes and pre-built ArrayRecord documents."""

import os
import subprocess
import sys

import numpy as np
import pytest

from memtrain_jax.config import load_config
from memtrain_jax.data import pipeline
from memtrain_jax.data.chunking import centre_truncate
from memtrain_jax.data.documents import PoolTooSmallError, maskable_entities
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.data.retrieval import BM25Retriever

NUM_PIVOTS = 24


def _config(cache_dir):
    c = load_config("data.py:cpu")
    c.cache_dir = str(cache_dir)
    c.num_documents = NUM_PIVOTS
    c.document.num_paragraphs = 6
    c.document.num_similar = 2
    c.document.min_tokens = 300
    c.document.max_tokens = 700
    c.chunking.chunk_size = 64
    c.chunking.max_chunks = 4  # 256-token budget: most documents are centre-truncated
    c.loader.batch_size = 2
    c.loader.max_answer_tokens = 16
    c.loader.shard_index = 0
    c.loader.shard_count = 1
    return c


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("data-cache")
    config = _config(cache)
    pool = pipeline.load_pool_from_config(config)
    tokenizer = pipeline.load_tokenizer(config, pool, log=None)
    prepared = pipeline.prepare_data(config, pool=pool, log=None)
    return config, pool, tokenizer, prepared


def _stream(env, n=None, **overrides):
    config, _, tokenizer, prepared = env
    config = config.copy_and_resolve_references()
    shard = {k: overrides.pop(k) for k in ("shard_index", "shard_count", "batch") if k in overrides}
    for key, value in overrides.items():
        config.loader[key] = value
    it = pipeline.make_iterator(config, prepared, tokenizer, **shard)
    return it if n is None else [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_prepared_pivots_entities_and_neighbours(env):
    config, pool, _, prepared = env
    assert prepared.num_pivots == NUM_PIVOTS and prepared.neighbours.shape == (NUM_PIVOTS, 2)
    r = BM25Retriever()
    r.build(pool)
    np.testing.assert_array_equal(prepared.neighbours, r.search(prepared.pivots, 2)[0])
    extractor = make_extractor("rules")
    found = extractor.extract([pool[i] for i in prepared.pivots])
    assert [tuple(maskable_entities(f, "[MASK]")) for f in found] == list(prepared.entities)
    assert prepared.stats["num_skipped_no_entity"] == prepared.stats["num_examined"] - NUM_PIVOTS

    logs = []
    again = pipeline.prepare_data(config, pool=pool, log=logs.append)
    assert any("loaded" in m for m in logs) and again.directory == prepared.directory
    np.testing.assert_array_equal(again.neighbours, prepared.neighbours)


def test_prepared_data_errors(env, tmp_path):
    config, pool, _, _ = env
    config = config.copy_and_resolve_references()
    config.cache_dir = str(tmp_path)
    with pytest.raises(pipeline.PreparedDataError, match="run `python -m memtrain_jax.tools.prepare"):
        pipeline.prepare_data(config, pool=pool, build=False, log=None)
    prepared = pipeline.prepare_data(config, pool=pool, log=None)
    np.save(os.path.join(prepared.directory, "neighbours.npy"), np.zeros((3, 2), np.int32))
    with pytest.raises(pipeline.PreparedDataError, match="neighbours shape"):
        pipeline.prepare_data(config, pool=pool, log=None)
    config.retrieval.rebuild = True  # rebuilds instead of failing
    assert pipeline.prepare_data(config, pool=pool, log=None).neighbours.shape == (NUM_PIVOTS, 2)
    config.pool.max_paragraphs = 5
    with pytest.raises(PoolTooSmallError, match=r"5 paragraphs.*num_paragraphs=6"):
        pipeline.prepare_data(config, log=None)


def test_episode_contents(env):
    config, _, tokenizer, prepared = env
    episodes = _stream(env, NUM_PIVOTS, batch=False, num_epochs=1)
    budget = config.chunking.chunk_size * config.chunking.max_chunks
    skipped = 0
    for ep in episodes:
        slot = int(ep["episode_id"]) % NUM_PIVOTS
        assert int(ep["epoch"]) == 0 and int(ep["seed"]) == config.seed
        assert str(ep["tokenizer_id"]) == pipeline.tokenizer_fingerprint(tokenizer)
        doc = pipeline.build_episode_document(prepared, slot, int(ep["episode_id"]), config, tokenizer)
        ids = tokenizer.encode(doc.text)
        masks_read = tokenizer.decode(centre_truncate(ids, budget).tolist()).count("[MASK]")
        assert bool(ep["usable"]) == (masks_read > 0)  # truncation that drops every mask: never trained on
        if not ep["usable"]:
            skipped += 1
            assert int(ep["num_chunks"]) == 0 and not ep["chunk_lengths"].any()
            continue
        assert int(ep["masks_kept"]) == masks_read
        assert int(ep["num_tokens"]) == len(ids)
        lengths = ep["chunk_lengths"]
        kept = np.concatenate([ep["tokens"][i, : lengths[i]] for i in range(int(ep["num_chunks"]))])
        np.testing.assert_array_equal(kept, centre_truncate(ids, budget))
        assert ep["tokens"].shape == (4, 64) and lengths.sum() == min(len(ids), budget)
        mask = np.arange(64)[None, :] >= lengths[:, None]
        assert (ep["tokens"][mask] == tokenizer.pad_id).all()
        assert str(ep["answer"]) == doc.gold and int(ep["pivot_index"]) == prepared.pivots[slot]
        assert tokenizer.decode(ep["answer_ids"][: ep["answer_length"]].tolist()) == doc.gold
        assert int(ep["mask_count"]) == doc.text.count("[MASK]") == doc.mask_count
        assert doc.gold in prepared.entities[slot]
    assert 0 < skipped < NUM_PIVOTS // 2  # this config truncates hard: some documents lose every mask
    stats = pipeline.document_statistics(config, prepared, tokenizer, NUM_PIVOTS)
    assert stats["skipped_all_masks_truncated"] == skipped and stats["used"] == NUM_PIVOTS - skipped


def test_usable_and_skipped_episodes_share_one_schema(env):
    """Every episode, usable or skipped, has EPISODE_FIELDS' names, in order, with their dtypes and shapes."""
    config, _, tokenizer, _ = env
    sizes = {
        "max_chunks": config.chunking.max_chunks,
        "chunk_size": config.chunking.chunk_size,
        "max_answer_tokens": config.loader.max_answer_tokens,
    }
    episodes = _stream(env, NUM_PIVOTS, batch=False, num_epochs=1)
    assert {bool(ep["usable"]) for ep in episodes} == {True, False}
    for ep in episodes:
        assert list(ep) == list(pipeline.EPISODE_FIELDS)
        for name, (shape, dtype) in pipeline.EPISODE_FIELDS.items():
            expected = tuple(sizes[d.strip()] for d in shape.strip("[]").split(",") if d.strip())
            assert np.shape(ep[name]) == expected and np.asarray(ep[name]).dtype.type is dtype, name


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_hosts_split_every_batch_of_the_one_stream(env, hosts):
    # batch_size 4 over 1, 2 or 4 hosts: host h builds rows [h*b, (h+1)*b) of every batch, so the hosts'
    # batches, concatenated in host order, are the one-host stream, across the 24-pivot epoch boundary.
    streams = [_stream(env, 8, batch_size=4, shard_index=h, shard_count=hosts) for h in range(hosts)]
    whole = _stream(env, 8, batch_size=4, shard_index=0, shard_count=1)
    for step, batch in enumerate(whole):
        parts = [stream[step] for stream in streams]
        assert all(len(p["episode_id"]) == 4 // hosts for p in parts)
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
    ids = [int(i) for batch in whole for i in batch["episode_id"]]
    for epoch in range(len(ids) // NUM_PIVOTS):
        slots = [i - epoch * NUM_PIVOTS for i in ids[epoch * NUM_PIVOTS : (epoch + 1) * NUM_PIVOTS]]
        assert sorted(slots) == list(range(NUM_PIVOTS))  # every pivot slot exactly once an epoch
    first, second = ids[:NUM_PIVOTS], [i - NUM_PIVOTS for i in ids[NUM_PIVOTS : 2 * NUM_PIVOTS]]
    assert first != second  # each epoch is shuffled anew
    # The position counts global batches: the same state on every host and for every host count.
    states = set()
    for count, index in [(1, 0), *((hosts, h) for h in range(hosts))]:
        it = _stream(env, batch_size=4, shard_index=index, shard_count=count)
        [next(it) for _ in range(3)]
        states.add(pipeline.iterator_state(it))
    assert len(states) == 1
    with pytest.raises(ValueError, match=r"batch_size=4 must be a multiple of the host count 3"):
        _stream(env, batch_size=4, shard_index=0, shard_count=3)


def test_episode_does_not_depend_on_host_count(env):
    single = {int(e["episode_id"]): e for e in _stream(env, batch=False, num_epochs=1)}
    sharded = _stream(env, batch=False, num_epochs=1, batch_size=3, shard_index=2, shard_count=3)
    for e in sharded:
        _assert_same([e], [single[int(e["episode_id"])]])


def test_resume_matches_uninterrupted_stream(env):
    # 14 batches of 2 cross the 24-pivot epoch boundary.
    uninterrupted = _stream(env, 14)
    it = _stream(env)
    first = [next(it) for _ in range(10)]
    state = pipeline.iterator_state(it)
    fresh = _stream(env)
    pipeline.restore_iterator_state(fresh, state)
    _assert_same(first + [next(fresh) for _ in range(4)], uninterrupted)
    assert {int(e) for b in uninterrupted[12:] for e in b["epoch"]} == {1}


def test_worker_processes_give_the_same_stream_and_resume(env):
    reference = _stream(env, 5)
    it = _stream(env, worker_count=2)
    try:
        got = [next(it) for _ in range(3)]
        state = pipeline.iterator_state(it)
    finally:
        it.close()
    fresh = _stream(env, worker_count=2)
    try:
        pipeline.restore_iterator_state(fresh, state)
        got += [next(fresh) for _ in range(2)]
    finally:
        fresh.close()
    _assert_same(got, reference)


def test_prebuilt_array_record_documents_equal_first_epoch(env, tmp_path):
    config, _, tokenizer, prepared = env
    config = config.copy_and_resolve_references()
    config.loader.array_record_dir = str(tmp_path / "docs")
    paths = pipeline.write_documents(config, prepared, tokenizer, log=None)
    assert len(paths) == 2 and all(os.path.isfile(p) for p in paths)
    config.loader.num_epochs = 1
    expected = list(pipeline.make_dataset(config, prepared, tokenizer))
    config.loader.documents = "array_record"
    got = list(pipeline.make_dataset(config, prepared, tokenizer))
    assert len(got) == NUM_PIVOTS // 2
    _assert_same(got, expected)

    # Documents written under other settings are refused, not silently used.
    config.document.header = "Doc {i}:"
    with pytest.raises(pipeline.PreparedDataError, match="another pool/config/tokenizer"):
        pipeline.make_dataset(config, prepared, tokenizer)


def test_bad_names_and_shards(env):
    config, pool, tokenizer, prepared = env
    bad = config.copy_and_resolve_references()
    bad.loader.documents = "on_disk"
    with pytest.raises(ValueError, match="'on_disk'"):
        pipeline.make_dataset(bad, prepared, tokenizer)
    bad = config.copy_and_resolve_references()
    bad.tokenizer.path = "vocab.wordpiece"
    with pytest.raises(ValueError, match="vocab.wordpiece"):
        pipeline.load_tokenizer(bad, pool)
    with pytest.raises(ValueError, match="shard_index=3"):
        pipeline.shard_options(config, 3, 3)
    auto = config.copy_and_resolve_references()
    auto.loader.shard_index = auto.loader.shard_count = -1
    options = pipeline.shard_options(auto)
    assert (options.shard_index, options.shard_count) == (0, 1)  # jax.process_index()/process_count()


def test_prepare_and_preview_tools_agree_with_the_pipeline(env):
    config, _, tokenizer, prepared = env
    overrides = [
        f"--config.cache_dir={config.cache_dir}",
        f"--config.num_documents={NUM_PIVOTS}",
        "--config.document.num_paragraphs=6",
        "--config.document.num_similar=2",
        "--config.document.min_tokens=300",
        "--config.document.max_tokens=700",
        "--config.chunking.chunk_size=64",
        "--config.chunking.max_chunks=4",
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(tool, *args):
        cmd = [sys.executable, "-m", f"memtrain_jax.tools.{tool}", "--config=configs/data.py:cpu", *overrides, *args]
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    # The cache written in this process is found again by the tool: keys are stable across processes.
    assert f"loaded {NUM_PIVOTS} pivots from {prepared.directory}" in run("prepare")
    shown = run("preview", "--index=5", "--epoch=1")
    doc = pipeline.build_episode_document(prepared, 5, NUM_PIVOTS + 5, config, tokenizer)
    assert f"gold answer: {doc.gold!r}" in shown and f"x {doc.mask_count}" in shown
    assert f"pivot: {doc.pivot_id!r}" in shown
    n_chunks = min(4, -(-len(tokenizer.encode(doc.text)) // 64))
    assert f"=== {n_chunks} chunks of <= 64 tokens" in shown


def test_a_qa_record_stream_visits_every_slot_once_an_epoch():
    """The QA tasks' stream (tasks/qa_records.py through pipeline.slot_stream): each epoch a seeded permutation of
    the train slots; episode ids unique across epochs (epoch * items + slot); two hosts split every batch."""
    from memtrain_jax.config import load_config

    data = load_config("configs/data.py:cpu")
    data.loader.batch_size = 2
    rows = _qa_rows(data, 0, 10)
    first, second = rows[:5], rows[5:]
    assert sorted(r for r, _ in first) == list(range(5)) and sorted(r for r, _ in second) == list(range(5))
    assert [e for _, e in first] == [r for r, _ in first]
    assert [e for _, e in second] == [7 + r for r, _ in second]
    assert _qa_rows(data, 0, 10) == rows and _qa_rows(data, 1, 10) != rows
    hosts = [_qa_rows(data, 0, 5, shard_index=i, shard_count=2) for i in range(2)]
    assert [row for pair in zip(*hosts, strict=True) for row in pair] == rows


def _qa_rows(data, seed, n, shard_index=0, shard_count=1):
    """The first n (record, episode id) of a QA stream of 5 train slots among 7 items."""
    from memtrain_jax.tasks.qa_records import RecordSlot

    data = data.copy_and_resolve_references()
    data.seed = seed
    stream = pipeline.slot_stream(
        data, 5, RecordSlot(5, 7), batch=False, shard_index=shard_index, shard_count=shard_count
    )
    return [(int(r["record"]), int(r["episode_id"])) for _, r in zip(range(n), stream, strict=False)]
