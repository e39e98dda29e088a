"""Write the QA sets prepared from the paragraph pool (the rule is in memtrain_jax/data/qa.py) and show a few.

    python -m memtrain_jax.tools.prepare_qa --config configs/memtrain.py:cpu [--show 3]

Writes `data.cache_dir/qa/qa-<key>/{dev,train}.json` (HotpotQA JSON, `qa.num_dev` and `qa.num_train`
questions) once; `memtrain eval-qa`, `compare` and task RL read the same files (they prepare them on
first use too). The text is Wikipedia's, under CC BY-SA 4.0: the folder's ATTRIBUTION.txt says so.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from memtrain_jax.data import qa as qa_data
from memtrain_jax.data.prepare import load_pool_from_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "A training config, e.g. configs/memtrain.py:cpu.")
_SHOW = flags.DEFINE_integer("show", 3, "Print this many dev questions.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("Pass --config, e.g. --config configs/memtrain.py:cpu")
    config = _CONFIG.value
    pool = load_pool_from_config(config.data)
    paths = qa_data.prepare_qa_sets(
        pool,
        int(config.qa.num_dev),
        int(config.qa.num_train),
        int(config.data.seed),
        os.path.join(config.data.cache_dir, "qa"),
        skip=int(config.qa.train_skip),
    )
    dev = qa_data.load_qa_file(paths["dev"])
    train = qa_data.load_qa_file(paths["train"])
    print(f"dev: {len(dev)} questions in {paths['dev']}\ntrain: {len(train)} questions in {paths['train']}")
    print(f"distractors: {len(qa_data.distractor_pool(pool, [*dev, *train]))} paragraphs; search corpus: {len(pool)}")
    for record in dev[: _SHOW.value]:
        print(f"- {record.question}\n  answer: {record.answers[0]}  (supporting: {record.supporting[0][0]})")


if __name__ == "__main__":
    app.run(main)
