"""Config loading/overrides and the mesh + logical-axis rules."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from memtrain_jax import sharding
from memtrain_jax.config import apply_overrides, load_config
from memtrain_jax.model import ModelConfig


def test_load_config_file_with_variant_and_overrides(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.lr = 1e-6 if arg != 'fast' else 1e-4\n"
        "    c.model = ml_collections.ConfigDict({'num_layers': 2})\n"
        "    return c\n"
    )
    assert load_config(str(path)).lr == 1e-6
    config = load_config(f"{path}:fast")
    assert config.lr == 1e-4
    changed = apply_overrides(config, {"model.num_layers": 4})
    assert changed.model.num_layers == 4 and config.model.num_layers == 2  # a copy, not in place
    with pytest.raises(KeyError, match="model.num_heads"):
        apply_overrides(config, {"model.num_heads": 4})


def test_missing_config_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no_such_file.py"):
        load_config("no_such_file.py:tiny")


def test_default_config_loads():
    config = load_config("configs/memtrain.py")
    assert config.model.source in ("gguf", "hf")
    with pytest.raises(ValueError, match="'bogus'"):
        load_config("configs/memtrain.py:bogus")


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
    mesh = sharding.make_mesh((-1, 2, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((4, 2, 2))
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh((-1, -1, 2))


def test_rules_from_config_validates_mesh_axes():
    rules = sharding.rules_from_config([["batch", ["data", "fsdp"]], ["embed", None]])
    assert rules == (("batch", ("data", "fsdp")), ("embed", None))
    with pytest.raises(ValueError, match="'model'"):
        sharding.rules_from_config([["mlp", "model"]])


def test_indivisible_dimensions_fall_back_to_replication():
    mesh = sharding.make_mesh((2, 2, 2))
    specs = {"a": P("vocab", "embed"), "b": P("batch", "mlp")}
    shapes = {"a": jax.ShapeDtypeStruct((101, 64), np.float32), "b": jax.ShapeDtypeStruct((6, 8), np.float32)}
    out = sharding.tree_shardings(mesh, specs, shapes=shapes)
    assert out["a"].spec == P(None, "fsdp")  # 101 is not divisible by tensor=2
    assert out["b"].spec == P("data", "tensor")  # 6 splits over data (2) but not data*fsdp (4)
    for name, s in out.items():  # every kept split really divides the array
        for dim, axes in zip(shapes[name].shape, s.spec, strict=False):
            axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
            assert dim % int(np.prod([mesh.shape[a] for a in axes])) == 0


def test_model_config_rejects_bad_values_with_the_value():
    base = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="'dotz'"):
        ModelConfig(**base, remat="dotz")
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ModelConfig(**{**base, "num_kv_heads": 3})
    with pytest.raises(ValueError, match="hidden_dim"):
        ModelConfig.from_dict({**base, "hidden_dim": 8})
    assert ModelConfig.from_dict(ModelConfig(**base).to_dict()) == ModelConfig(**base)


def test_every_section_refuses_an_unknown_field_the_same_way():
    """One check for every typed section: a misspelt field is a KeyError and a UsageError (one line on the CLI)
    naming the field and the nearest known one; the agent section refuses fields filled from other sections."""
    from memtrain_jax.agent.config import AgentConfig
    from memtrain_jax.config import UnknownFieldError, UsageError
    from memtrain_jax.data.documents import DocumentConfig
    from memtrain_jax.model.config import ModelConfig
    from memtrain_jax.train.learner import OptimConfig
    from memtrain_jax.train.trainer import TrainConfig

    cases = [
        (lambda: TrainConfig.from_config({"stepz": 3}), "train", "stepz", "steps"),
        (lambda: OptimConfig.from_config({"learning_rat": 1.0}), "optim", "learning_rat", "learning_rate"),
        (lambda: ModelConfig.from_dict({"num_layer": 2}), "model config", "num_layer", "num_layers"),
        (lambda: DocumentConfig.from_config({"num_paragraph": 2}), "data.document", "num_paragraph", "num_paragraphs"),
    ]
    for build, section, field, nearest in cases:
        with pytest.raises(UnknownFieldError) as caught:
            build()
        assert isinstance(caught.value, KeyError) and isinstance(caught.value, UsageError)
        message = str(caught.value)
        assert message.startswith(f"Unknown {section} field(s) ['{field}']") and f"did you mean {nearest}" in message
    config = load_config("configs/memtrain.py:tiny")
    config.agent.temperature = 0.5  # a sampling field: set in `sampling`, never in `agent`
    with pytest.raises(UnknownFieldError, match="'temperature'"):
        AgentConfig.from_config(config)


def test_cpu_variants_depart_from_the_paper_only_where_listed():
    """configs/memtrain.py builds every variant as the paper's recipe plus its listed departures (_CPU, _VARIANTS;
    the data section from configs/data.py:cpu): no other field differs, and each listed departure holds."""
    import importlib.util

    from memtrain_jax.config import CONFIGS_DIR, flatten

    spec = importlib.util.spec_from_file_location("memtrain_variants", f"{CONFIGS_DIR}/memtrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paper = flatten(load_config("configs/memtrain.py:paper"))
    cpu_data = flatten(load_config("configs/data.py:cpu"), "data.")
    for variant in ("cpu", "cpu_long", "tiny"):
        config = flatten(load_config(f"configs/memtrain.py:{variant}"))
        listed = {**module._CPU, **module._VARIANTS[variant]}
        differing = {k for k in config if config[k] != paper.get(k)} - {"workdir"}
        unlisted = {k for k in differing if k not in listed and config[k] != cpu_data.get(k)}
        assert not unlisted, f"{variant} departs from the paper in unlisted fields {sorted(unlisted)}"
        assert all(config[k] == v for k, v in listed.items())
        assert config["workdir"] == f"runs/memtrain-{variant}"


def test_the_rl_section_is_typed_once():
    """RLConfig: the loss settings every consumer reads, bad names refused with the value, a misspelt field named."""
    from memtrain_jax.config import UnknownFieldError, UsageError
    from memtrain_jax.rl import LossConfig, RLConfig

    rl = RLConfig.from_config(load_config("configs/memtrain.py:cpu,token_mean").rl)
    assert rl.loss == LossConfig(clip_low=0.2, clip_high=0.2, dual_clip=0.0, kl_coef=0.0, aggregation="token_mean")
    with pytest.raises(UnknownFieldError, match="did you mean kl_coef"):
        RLConfig.from_config({"kl_coeff": 0.0})
    assert RLConfig.from_config(load_config("configs/memtrain.py:cpu,positive_only").rl).negative_weight == 0.0
    assert RLConfig.from_config(load_config("configs/memtrain.py:cpu,negative=0.25").rl).negative_weight == 0.25
    with pytest.raises(UsageError, match="'zscore'"):
        RLConfig.from_config({"advantage_normalisation": "zscore"})
    with pytest.raises(ValueError, match="'k4'"):
        RLConfig.from_config({"kl_estimator": "k4"})
